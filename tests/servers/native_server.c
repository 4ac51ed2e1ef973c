/* A tiny HTTP/1.0 server for slowtrace's tests: one connection at a time, named handlers.
 * Built by the tests with frame pointers: gcc -O1 -g -fno-omit-frame-pointer.
 * Prints "PORT <n>" once listening on 127.0.0.1. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Burns CPU for `seconds`: the frame slowtrace must name. */
__attribute__((noinline)) void slow_handler_spin(double seconds) {
    double end = now() + seconds;
    while (now() < end) {
        for (int i = 0; i < 100000; i++) sink += i;
    }
}

__attribute__((noinline)) void fast_handler(void) { sink++; }

__attribute__((noinline)) int handle_request(int fd) {
    char buf[2048];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    if (strncmp(buf, "GET /spin", 9) == 0) slow_handler_spin(2.0);
    else fast_handler();
    const char *resp = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    return (int)send(fd, resp, strlen(resp), 0);
}

int main(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) return 1;
    socklen_t len = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &len);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        int c = accept(s, (struct sockaddr *)&peer, &pl);
        if (c < 0) continue;
        handle_request(c);
        close(c);
    }
}
