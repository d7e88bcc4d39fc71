/* Launches a program N times (fork+execve+waitpid, or posix_spawn with -s) and prints
 * the median and p90 wall time of one launch in microseconds: "p50_us p90_us". Used by
 * scripts/bench.sh to time launches from a C caller, with and without the interposer.
 * With -p MS it idles MS milliseconds before each launch (an agent's launches come one
 * at a time, between its own work), outside the timed part. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int use_spawn = 0, pause_ms = 0, i = 1;
    for (;;) {
        if (argc > i && strcmp(argv[i], "-s") == 0) { use_spawn = 1; i++; }
        else if (argc > i + 1 && strcmp(argv[i], "-p") == 0) { pause_ms = atoi(argv[i + 1]); i += 2; }
        else break;
    }
    if (argc - i < 2) { fprintf(stderr, "usage: launch_loop [-s] [-p MS] N PROGRAM [ARGS...]\n"); return 2; }
    int n = atoi(argv[i]);
    char **cmd = &argv[i + 1];
    double *t = calloc(n, sizeof *t);
    for (int k = 0; k < n; k++) {
        struct timespec a, b;
        if (pause_ms > 0) usleep(pause_ms * 1000);
        clock_gettime(CLOCK_MONOTONIC, &a);
        pid_t pid;
        if (use_spawn) {
            if (posix_spawn(&pid, cmd[0], NULL, NULL, cmd, environ) != 0) { perror("posix_spawn"); return 1; }
        } else {
            pid = fork();
            if (pid == 0) { execve(cmd[0], cmd, environ); _exit(127); }
        }
        int st;
        waitpid(pid, &st, 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "launch %d failed: %x\n", k, st); return 1; }
        t[k] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
    }
    qsort(t, n, sizeof *t, cmp);
    printf("%.0f %.0f\n", t[n / 2], t[n * 9 / 10]);
    return 0;
}
