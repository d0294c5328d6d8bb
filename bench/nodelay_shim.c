/* bench/nodelay_shim.c: an LD_PRELOAD shim that sets TCP_NODELAY on every
 * TCP socket a program creates or accepts, so that bench/run can measure
 * peers (Haraka, proxsmtp) without Nagle's algorithm: with Nagle on, a small
 * reply written after another small unacknowledged one waits for the peer's
 * delayed ACK (~40 ms on Linux), which is a cost of a socket option, not of
 * the peer's work.
 *
 * Built by bench/run:  cc -O2 -shared -fPIC -o nodelay_shim.so nodelay_shim.c -ldl
 * Used as:             LD_PRELOAD=/path/nodelay_shim.so proxsmtpd ...
 *
 * Hooks socket() (outgoing and listening sockets; Linux copies TCP_NODELAY
 * from a listener to the sockets it accepts), accept() and accept4() (in case
 * a program's listener was made elsewhere). A socket that is not TCP is left
 * alone; the setsockopt's result is ignored, as the option is advisory here.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return;
  int domain = 0;
  len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return;
  if (domain != AF_INET && domain != AF_INET6) return;
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int socket(int domain, int type, int protocol) {
  static int (*real)(int, int, int);
  if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
  int fd = real(domain, type, protocol);
  if (fd >= 0 && (domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_STREAM) nodelay(fd);
  return fd;
}

int accept(int s, struct sockaddr* addr, socklen_t* len) {
  static int (*real)(int, struct sockaddr*, socklen_t*);
  if (!real) real = (int (*)(int, struct sockaddr*, socklen_t*))dlsym(RTLD_NEXT, "accept");
  int fd = real(s, addr, len);
  nodelay(fd);
  return fd;
}

int accept4(int s, struct sockaddr* addr, socklen_t* len, int flags) {
  static int (*real)(int, struct sockaddr*, socklen_t*, int);
  if (!real) real = (int (*)(int, struct sockaddr*, socklen_t*, int))dlsym(RTLD_NEXT, "accept4");
  int fd = real(s, addr, len, flags);
  nodelay(fd);
  return fd;
}
