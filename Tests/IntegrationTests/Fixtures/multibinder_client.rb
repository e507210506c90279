#!/usr/bin/env ruby
# A client with multibinder's client semantics: one connection from BINDER_SOCK, a bare JSON-RPC
# request (no id, no newline) per sendmsg, the reply and its fd from one recvmsg.
# Usage: multibinder_client.rb ADDRESS PORT [ADDRESS PORT ...]
# Prints, per bind, "ok FD INODE" (the socket's inode) or "error MESSAGE".
require 'socket'
require 'json'

binder = UNIXSocket.open(ENV.fetch('BINDER_SOCK'))
ARGV.each_slice(2) do |address, port|
  binder.sendmsg JSON.dump({
    :jsonrpc => '2.0',
    :method => 'bind',
    :params => [{ :address => address, :port => port.to_i }],
  }), 0, nil
  msg, _, _, ctl = binder.recvmsg(:scm_rights => true)
  response = JSON.parse(msg)
  if response['error']
    puts "error #{response['error']['message']}"
  else
    io = ctl.unix_rights[0]
    puts "ok #{io.fileno} #{File.stat("/proc/self/fd/#{io.fileno}").ino} #{io.getsockopt(:SOCKET, :ACCEPTCONN).bool}"
  end
end
binder.close
