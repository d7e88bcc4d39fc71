/* Runs a program under a seccomp filter that allows every system call, and nothing else:
 * the least any seccomp sandbox adds (every routed program carries the broker's
 * parent-signal filter, docker and bwrap --seccomp theirs). Used by scripts/bench.sh as
 * the control row of the pipe relays: what a filter on the writer costs without ctx.
 *     under_seccomp PROGRAM [ARGS...] */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: under_seccomp PROGRAM [ARGS...]\n"); return 2; }
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = { .len = 1, .filter = &allow };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("under_seccomp: seccomp");
        return 125;
    }
    execvp(argv[1], argv + 1);
    perror("under_seccomp: exec");
    return 127;
}
