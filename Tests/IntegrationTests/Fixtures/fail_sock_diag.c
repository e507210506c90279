// Preloaded into second-chance by a test (LD_PRELOAD): every sock_diag request fails to send, as
// when the kernel cannot answer, so that the "lookup failed" path runs end to end. Other sockets
// are left alone.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/netlink.h>
#include <sys/socket.h>

static int is_sock_diag(int fd) {
    int protocol = 0;
    socklen_t length = sizeof(protocol);
    return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &length) == 0 && protocol == NETLINK_SOCK_DIAG;
}

ssize_t sendto(int fd, const void *bytes, size_t length, int flags, const struct sockaddr *address, socklen_t address_length) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "sendto");
    if (is_sock_diag(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd, bytes, length, flags, address, address_length);
}
