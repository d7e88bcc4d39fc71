/* Launch throughput: P caller processes each loop fork+execve+waitpid of PROGRAM, all at
 * once, for a fixed time (-t SECONDS) or until TOTAL launches are done (-n TOTAL); prints
 * "launches elapsed_s launches_per_s". Each caller is a forked copy of this process, so
 * under LD_PRELOAD=libctx_interposer.so with CTX_ROUTE set (and this program in
 * CTX_PASSTHROUGH) every launch is routed through the broker. A launch that does not exit
 * 0 fails the run: throughput of failures is not throughput.
 * Used by scripts/bench.sh. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct shared {
    atomic_long claimed; /* -n mode: launches handed out so far */
    atomic_long done;
    atomic_long failed;
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int launch(char **cmd) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execve(cmd[0], cmd, environ);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    int p = 1, opt;
    double seconds = 0;
    long total = 0;
    while ((opt = getopt(argc, argv, "+p:t:n:")) != -1) {
        if (opt == 'p') p = atoi(optarg);
        else if (opt == 't') seconds = atof(optarg);
        else if (opt == 'n') total = atol(optarg);
        else goto usage;
    }
    if (optind >= argc || p < 1 || (seconds <= 0) == (total <= 0)) goto usage;
    char **cmd = &argv[optind];

    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 1; }
    double start = now(), deadline = start + seconds;
    for (int i = 0; i < p; i++) {
        pid_t w = fork();
        if (w < 0) { perror("fork"); return 1; }
        if (w > 0) continue;
        for (;;) {
            if (total > 0 ? atomic_fetch_add(&sh->claimed, 1) >= total : now() >= deadline) break;
            if (launch(cmd) == 0) atomic_fetch_add(&sh->done, 1);
            else atomic_fetch_add(&sh->failed, 1);
        }
        _exit(0);
    }
    while (wait(NULL) > 0) {}
    double elapsed = now() - start;
    long done = atomic_load(&sh->done), failed = atomic_load(&sh->failed);
    if (failed > 0) {
        fprintf(stderr, "par_launch: %ld of %ld launches failed\n", failed, done + failed);
        return 1;
    }
    printf("%ld %.3f %.0f\n", done, elapsed, done / elapsed);
    return 0;
usage:
    fprintf(stderr, "usage: par_launch [-p CALLERS] (-t SECONDS | -n TOTAL) PROGRAM [ARGS...]\n");
    return 2;
}
