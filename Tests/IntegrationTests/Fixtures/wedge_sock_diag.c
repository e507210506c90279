// Preloaded into second-chance by a test (LD_PRELOAD): once the file WEDGE_FLAG names exists,
// a sock_diag request never returns, as a lookup stuck in the kernel would not, so that the thread
// making it stops coming round while the process lives on. Other sockets are left alone.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/netlink.h>
#include <stdlib.h>
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
    const char *flag = getenv("WEDGE_FLAG");
    if (flag && is_sock_diag(fd) && access(flag, F_OK) == 0) {
        for (;;) pause();
    }
    return real(fd, bytes, length, flags, address, address_length);
}
