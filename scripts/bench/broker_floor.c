/* The floor of any brokered launch on this host: a minimal broker in plain C, no ctx.
 *
 * A server (forked at start, single purpose) accepts a connection, takes the caller's
 * stdio with SCM_RIGHTS, forks and execs the program, waits for it and writes its exit
 * code back; the caller connects, sends, vfork-execs a stand-in of a few instructions that
 * reads the code and exits with it, and waits for the stand-in (ctx's hook and shim do
 * the same). Two variants, each against a direct posix_spawn in the same loop:
 *
 *   bare        the above, nothing else;
 *   essentials  what ctx cannot launch without: the caller's reads of what the launch
 *               carries (64 dispositions, 16 limits, its descriptor list), a verdict the
 *               caller waits for before starting its stand-in, a hand-off from the
 *               accepting thread to another, a pidfd from clone3-like CLONE_PIDFD waited on
 *               with poll, and in the child 64 signal resets, a switch to another uid and
 *               a 9-instruction seccomp filter with a listener.
 *
 * Prints "DIRECT_P50 BARE_P50 ESSENTIALS_P50" in microseconds (N launches each, default
 * 300). Run as root (the uid switch). Used by scripts/bench.sh. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int essentials;
static struct sockaddr_un addr = {.sun_family = AF_UNIX};
static char standin[4096];
static int handoff[2];

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct launch {
    int fds[3];
    char *path;
};

static int child(void *arg) {
    struct launch *l = arg;
    if (essentials) {
        for (int s = 1; s <= 64; s++) {
            struct sigaction dfl = {.sa_handler = SIG_DFL};
            syscall(SYS_rt_sigaction, s, &dfl, NULL, 8);
        }
        gid_t nogroup = 65534;
        if (setgroups(1, &nogroup) || setresgid(65534, 65534, 65534) ||
            setresuid(65534, 65534, 65534))
            _exit(126);
        struct sock_filter f[9];
        for (int i = 0; i < 8; i++)
            f[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0);
        f[8] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = {9, f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
            syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog) < 0)
            _exit(126);
    }
    for (int i = 0; i < 3; i++)
        dup2(l->fds[i], i);
    char *argv[] = {l->path, NULL};
    execve(l->path, argv, environ);
    _exit(127);
}

static void serve(int conn) {
    static char stack[256 * 1024];
    char path[256], control[CMSG_SPACE(3 * sizeof(int))];
    struct iovec iov = {path, sizeof path - 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (n <= 0 || !c) {
        close(conn);
        return;
    }
    path[n] = 0;
    struct launch l = {.path = path};
    memcpy(l.fds, CMSG_DATA(c), sizeof l.fds);
    int status = 0, pidfd = -1;
    if (essentials) {
        char verdict = 0;
        if (write(conn, &verdict, 1) != 1)
            goto out;
        pid_t pid = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD,
                          &l, &pidfd);
        if (pid < 0)
            goto out;
        struct pollfd p = {.fd = pidfd, .events = POLLIN};
        poll(&p, 1, -1);
        siginfo_t si;
        waitid(P_PIDFD, pidfd, &si, WEXITED);
        status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
        close(pidfd);
    } else {
        pid_t pid = vfork();
        if (pid == 0)
            child(&l);
        waitpid(pid, &status, 0);
        status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    unsigned char code = status;
    if (write(conn, &code, 1) != 1)
        perror("broker_floor: status");
out:
    for (int i = 0; i < 3; i++)
        close(l.fds[i]);
    close(conn);
}

static void *launcher(void *unused) {
    (void)unused;
    for (int conn; read(handoff[0], &conn, sizeof conn) == sizeof conn;)
        serve(conn);
    return NULL;
}

static void server(int listener) {
    signal(SIGPIPE, SIG_IGN);
    pthread_t t;
    if (essentials && (pipe(handoff) || pthread_create(&t, NULL, launcher, NULL)))
        _exit(1);
    for (;;) {
        int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0)
            continue;
        if (essentials) {
            if (write(handoff[1], &conn, sizeof conn) != sizeof conn)
                close(conn);
        } else {
            serve(conn);
        }
    }
}

/* What ctx's hook reads before it sends a launch. */
static void gather(void) {
    for (int s = 1; s <= 64; s++) {
        char old[32];
        syscall(SYS_rt_sigaction, s, NULL, old, 8);
    }
    for (int r = 0; r < 16; r++) {
        struct rlimit l;
        prlimit(0, r, NULL, &l);
    }
    DIR *d = opendir("/proc/self/fd");
    while (d && readdir(d))
        ;
    if (d)
        closedir(d);
}

static double brokered(void) {
    double t0 = now_us();
    if (essentials)
        gather();
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr)) {
        perror("broker_floor: connect");
        exit(1);
    }
    int fds[3] = {0, 1, 2};
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {"/bin/true", 9};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    char verdict;
    if (sendmsg(s, &msg, 0) < 0 || (essentials && read(s, &verdict, 1) != 1)) {
        perror("broker_floor: request");
        exit(1);
    }
    pid_t pid = vfork();
    if (pid == 0) {
        if (dup2(s, 3) < 0 || (s == 3 && fcntl(3, F_SETFD, 0)))
            _exit(125);
        char *argv[] = {standin, NULL};
        execve(standin, argv, environ);
        _exit(127);
    }
    close(s);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "broker_floor: the stand-in ended with status %#x\n", status);
        exit(1);
    }
    return now_us() - t0;
}

static double direct(void) {
    char *argv[] = {"/bin/true", NULL};
    double t0 = now_us();
    pid_t pid;
    if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ)) {
        perror("broker_floor: posix_spawn");
        exit(1);
    }
    waitpid(pid, NULL, 0);
    return now_us() - t0;
}

/* p50 of brokered launches against a server of the given kind; direct p50 alongside. */
static void run(int n, int kind, double *d50, double *b50) {
    essentials = kind;
    snprintf(addr.sun_path, sizeof addr.sun_path, "/tmp/broker_floor.%d.sock", getpid());
    unlink(addr.sun_path);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 64)) {
        perror("broker_floor: listen");
        exit(1);
    }
    pid_t srv = fork();
    if (srv == 0) {
        server(listener);
        _exit(0);
    }
    close(listener);
    double *d = calloc(n, sizeof *d), *b = calloc(n, sizeof *b);
    for (int i = 0; i < n; i++) {
        d[i] = direct();
        b[i] = brokered();
    }
    kill(srv, SIGKILL);
    waitpid(srv, NULL, 0);
    unlink(addr.sun_path);
    qsort(d, n, sizeof *d, by_value);
    qsort(b, n, sizeof *b, by_value);
    *d50 = d[n / 2];
    *b50 = b[n / 2];
    free(d);
    free(b);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: broker_floor STANDIN [N]\n");
        return 2;
    }
    snprintf(standin, sizeof standin, "%s", argv[1]);
    int n = argc > 2 ? atoi(argv[2]) : 300;
    double d1, bare, d2, full;
    run(n, 0, &d1, &bare);
    run(n, 1, &d2, &full);
    printf("%.0f %.0f %.0f\n", (d1 + d2) / 2, bare, full);
    return 0;
}
