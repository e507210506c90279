// Preloaded into second-chance by a test (LD_PRELOAD): makes sock_diag requests misbehave as the
// kernel might, so that the daemon's answer to it runs end to end. Other sockets are left alone.
//   SOCK_DIAG_FAULT=fail         every request fails to send (EIO): the "lookup failed" path
//   SOCK_DIAG_FAULT=wedge:FILE   once FILE exists, a request never returns: the thread making it
//                                stops coming round while the process lives on (the watchdog)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/netlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int is_sock_diag(int fd) {
    int protocol = 0;
    socklen_t length = sizeof(protocol);
    return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &length) == 0 && protocol == NETLINK_SOCK_DIAG;
}

ssize_t sendto(int fd, const void *bytes, size_t length, int flags, const struct sockaddr *address, socklen_t address_length) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "sendto");
    const char *fault = getenv("SOCK_DIAG_FAULT");
    if (fault && is_sock_diag(fd)) {
        if (strcmp(fault, "fail") == 0) {
            errno = EIO;
            return -1;
        }
        if (strncmp(fault, "wedge:", 6) == 0 && access(fault + 6, F_OK) == 0) {
            for (;;) pause();
        }
    }
    return real(fd, bytes, length, flags, address, address_length);
}
