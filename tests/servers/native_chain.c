/* Three C frames between Python frames, for the capture test of native unwinding: built with
 * -O2 -fomit-frame-pointer (like the pyenv CPython and Debian's libc), called through ctypes.
 * Each call is followed by work so that no call becomes a tail jump and no frame disappears. */
#include <time.h>

static volatile int sink;

__attribute__((noinline)) int chain_inner(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, 0);
    sink++;
    return sink;
}

__attribute__((noinline)) int chain_middle(int ms) {
    int r = chain_inner(ms);
    sink += r;
    return r + 1;
}

__attribute__((noinline)) int chain_outer(int ms) {
    int r = chain_middle(ms);
    sink += r;
    return r + 1;
}
