/* Calls one exported launch function of libctx_interposer.so, chosen by argv[1], to run
 * `sh -c SCRIPT` (argv[2]); exits with what the caller observes: the child's status for
 * spawn-style functions, the exec'd program's own for the exec family. With argv[1] =
 * "enoent:<fn>" it launches a missing program and prints the errno name it got. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int report(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) {
        printf("signal %d\n", WTERMSIG(status));
        fflush(stdout);
        return 128 + WTERMSIG(status);
    }
    return 125;
}

static int wait_for(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return 125;
    }
    return report(status);
}

static const char *errname(int e)
{
    switch (e) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case ENOTDIR: return "ENOTDIR";
    case ENOEXEC: return "ENOEXEC";
    default: return strerror(e);
    }
}

static int missing(const char *fn)
{
    const char *path = "/nonexistent/prog", *file = "nonexistent-prog-xyz";
    char *argv[] = {"x", NULL};
    int r = -1;
    pid_t pid;
    if (!strcmp(fn, "execve")) r = execve(path, argv, environ);
    else if (!strcmp(fn, "execv")) r = execv(path, argv);
    else if (!strcmp(fn, "execvp")) r = execvp(file, argv);
    else if (!strcmp(fn, "execvpe")) r = execvpe(file, argv, environ);
    else if (!strcmp(fn, "execl")) r = execl(path, "x", (char *)NULL);
    else if (!strcmp(fn, "execlp")) r = execlp(file, "x", (char *)NULL);
    else if (!strcmp(fn, "execle")) r = execle(path, "x", (char *)NULL, environ);
    else if (!strcmp(fn, "execveat")) r = execveat(AT_FDCWD, path, argv, environ, 0);
    else if (!strcmp(fn, "noexec")) r = execv("/etc/hostname", argv);
    else if (!strcmp(fn, "posix_spawn")) {
        errno = posix_spawn(&pid, path, NULL, NULL, argv, environ);
    } else if (!strcmp(fn, "posix_spawnp")) {
        errno = posix_spawnp(&pid, file, NULL, NULL, argv, environ);
    } else {
        fprintf(stderr, "unknown %s\n", fn);
        return 2;
    }
    (void)r;
    printf("%s\n", errname(errno));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: launch_all FN SCRIPT\n");
        return 2;
    }
    const char *fn = argv[1], *script = argv[2];
    if (!strncmp(fn, "enoent:", 7))
        return missing(fn + 7);
    char *sh_argv[] = {"sh", "-c", (char *)script, NULL};
    pid_t pid;
    int rc;
    setvbuf(stdout, NULL, _IONBF, 0);

    if (!strcmp(fn, "execve")) execve("/bin/sh", sh_argv, environ);
    else if (!strcmp(fn, "execv")) execv("/bin/sh", sh_argv);
    else if (!strcmp(fn, "execvp")) execvp("sh", sh_argv);
    else if (!strcmp(fn, "execvpe")) execvpe("sh", sh_argv, environ);
    else if (!strcmp(fn, "execl")) execl("/bin/sh", "sh", "-c", script, (char *)NULL);
    else if (!strcmp(fn, "execlp")) execlp("sh", "sh", "-c", script, (char *)NULL);
    else if (!strcmp(fn, "execle")) execle("/bin/sh", "sh", "-c", script, (char *)NULL, environ);
    else if (!strcmp(fn, "execveat")) execveat(AT_FDCWD, "/bin/sh", sh_argv, environ, 0);
    else if (!strcmp(fn, "fexecve")) {
        int fd = open("/bin/sh", O_RDONLY | O_CLOEXEC);
        fexecve(fd, sh_argv, environ);
    } else if (!strcmp(fn, "vfork")) {
        pid = vfork();
        if (pid == 0) {
            execve("/bin/sh", sh_argv, environ);
            _exit(127);
        }
        return wait_for(pid);
    } else if (!strcmp(fn, "posix_spawn_plain") || !strcmp(fn, "posix_spawnp_plain")) {
        /* No file actions (the hook routes these itself): fd 8 inheritable, fd 9
         * close-on-exec, the caller's cwd. */
        dup2(1, 8);
        int nine = dup3(open("/dev/null", O_RDONLY), 9, O_CLOEXEC);
        (void)nine;
        if (!strcmp(fn, "posix_spawn_plain"))
            rc = posix_spawn(&pid, "/bin/sh", NULL, NULL, sh_argv, environ);
        else
            rc = posix_spawnp(&pid, "sh", NULL, NULL, sh_argv, environ);
        if (rc != 0) {
            printf("spawn failed: %s\n", errname(rc));
            return 125;
        }
        return wait_for(pid);
    } else if (!strcmp(fn, "posix_spawn_busy")) {
        /* No file actions, but descriptor 1023 (where the hook hands the shim its
         * connection) is taken: the launch still routes, and 1023 stays ours. */
        int busy = dup3(open("/dev/null", O_RDONLY), 1023, O_CLOEXEC);
        if (busy != 1023) {
            printf("cannot take 1023\n");
            return 125;
        }
        rc = posix_spawn(&pid, "/bin/sh", NULL, NULL, sh_argv, environ);
        if (rc != 0) {
            printf("spawn failed: %s\n", errname(rc));
            return 125;
        }
        rc = wait_for(pid);
        char target[64] = {0};
        if (readlink("/proc/self/fd/1023", target, sizeof target - 1) > 0 &&
            !strcmp(target, "/dev/null"))
            printf("kept1023\n");
        return rc;
    } else if (!strcmp(fn, "posix_spawn") || !strcmp(fn, "posix_spawnp")) {
        /* File actions the routed program must see: stdout dup'ed onto fd 5, fd 6 opened
         * on a file, fd 7 closed, cwd changed. */
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, 1, 5);
        posix_spawn_file_actions_addopen(&fa, 6, "/etc/hostname", O_RDONLY, 0);
        posix_spawn_file_actions_addclose(&fa, 7);
        posix_spawn_file_actions_addchdir_np(&fa, "/");
        int seven = dup2(open("/dev/null", O_RDONLY), 7);
        (void)seven;
        if (!strcmp(fn, "posix_spawn"))
            rc = posix_spawn(&pid, "/bin/sh", &fa, NULL, sh_argv, environ);
        else
            rc = posix_spawnp(&pid, "sh", &fa, NULL, sh_argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        if (rc != 0) {
            printf("spawn failed: %s\n", errname(rc));
            return 125;
        }
        return wait_for(pid);
    } else if (!strcmp(fn, "system")) {
        return report(system(script));
    } else if (!strcmp(fn, "popen")) {
        FILE *f = popen(script, "r");
        if (!f) {
            perror("popen");
            return 125;
        }
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stdout);
        return report(pclose(f));
    } else {
        fprintf(stderr, "unknown function %s\n", fn);
        return 2;
    }
    printf("exec failed: %s\n", errname(errno));
    return 125;
}
