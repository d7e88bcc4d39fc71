/* The PTY's own ceiling: a child writes BYTES of zeros to a PTY slave as fast as it can,
 * this process reads the master with a 64 KiB buffer; prints MB/s. No relay, no copy to
 * anywhere else: no PTY relay (script(1), ssh -tt, ctx exec -t) can beat this figure on
 * the same kernel. With a PROGRAM, the child runs it with the slave as its standard output
 * instead (e.g. `head -c BYTES /dev/zero`, the writer of bench.sh's relay rows): the
 * ceiling for a relay of that same writer. With -s the child first leads a session of its
 * own with the PTY as its controlling terminal, as under any terminal (script(1), ssh -tt,
 * tmux, ctx exec -t): with the kernel's autogroup scheduling on (Debian's default), a new
 * session is a scheduling group of its own, and the writer's wake-ups then wait longer for
 * a CPU than they do in the caller's group (89-94% of the rate without -s on a 2-vCPU VM).
 * Used by scripts/bench.sh and bench-pty.sh.
 *   pty_rate [-s] BYTES [PROGRAM ARG...] */
#define _GNU_SOURCE
#include <pty.h>
#include <string.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int session = argc > 1 && strcmp(argv[1], "-s") == 0;
    if (session) {
        argv++;
        argc--;
    }
    long total = argc > 1 ? atol(argv[1]) : 200000000;
    int m, s;
    if (openpty(&m, &s, NULL, NULL, NULL) < 0) { perror("openpty"); return 1; }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t p = fork();
    if (p == 0) {
        close(m);
        if (session && (setsid() < 0 || ioctl(s, TIOCSCTTY, 0) < 0)) _exit(126);
        if (argc > 2) {
            dup2(s, 1);
            close(s);
            execvp(argv[2], argv + 2);
            _exit(127);
        }
        static char z[65536];
        for (long left = total; left > 0;) {
            long n = write(s, z, left > (long)sizeof z ? (long)sizeof z : left);
            if (n <= 0) _exit(1);
            left -= n;
        }
        _exit(0);
    }
    close(s);
    static char buf[65536];
    long got = 0;
    while (got < total) {
        long n = read(m, buf, sizeof buf);
        if (n <= 0) break;
        got += n;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    int st;
    waitpid(p, &st, 0);
    double t = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%.0f\n", got / 1e6 / t);
    /* Now and then the master reads EIO once the writer has closed the slave, before the
     * last few hundred bytes (about 1 run in 200): the rate stands, the run is not failed. */
    int wrote_all = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    return got == total || (wrote_all && total - got < 4096) ? 0 : 1;
}
