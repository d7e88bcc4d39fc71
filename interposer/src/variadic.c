/* The variadic half of the exec family. Stable Rust can neither define a variadic function
 * nor read a va_list, so these gather the NULL-terminated argument list into an array on
 * the stack (no heap: execl* may run between vfork and exec) and hand it to the Rust entry
 * points. The exported execl/execlp/execle symbols are Rust naked trampolines jumping here,
 * because rustc's cdylib version script hides every symbol a C object defines. */

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>

extern char **environ;

int ctx_entry_execve(const char *path, char *const argv[], char *const envp[]);
int ctx_entry_execvp(const char *file, char *const argv[]);

/* A bound well above what the kernel accepts (ARG_MAX is 2 MiB of pointers and strings),
 * so the stack array stays finite even for a corrupt, unterminated list. */
#define CTX_MAX_ARGS (256 * 1024)

static size_t count_args(const char *arg0, va_list ap)
{
    size_t n = 1;
    va_list cp;
    va_copy(cp, ap);
    if (arg0 != NULL) {
        while (n < CTX_MAX_ARGS && va_arg(cp, const char *) != NULL)
            n++;
    } else {
        n = 0;
    }
    va_end(cp);
    return n;
}

#define GATHER(argv, n, arg0, ap)                                  \
    do {                                                           \
        if (n > 0)                                                 \
            (argv)[0] = (char *)(arg0);                            \
        for (size_t i_ = 1; i_ < (n); i_++)                        \
            (argv)[i_] = va_arg(ap, char *);                       \
        (argv)[(n)] = NULL;                                        \
    } while (0)

__attribute__((visibility("hidden"))) int ctx_execl(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    if (n >= CTX_MAX_ARGS) {
        va_end(ap);
        errno = E2BIG;
        return -1;
    }
    char *argv[n + 1];
    GATHER(argv, n, arg, ap);
    va_end(ap);
    return ctx_entry_execve(path, argv, environ);
}

__attribute__((visibility("hidden"))) int ctx_execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    if (n >= CTX_MAX_ARGS) {
        va_end(ap);
        errno = E2BIG;
        return -1;
    }
    char *argv[n + 1];
    GATHER(argv, n, arg, ap);
    va_end(ap);
    return ctx_entry_execvp(file, argv);
}

__attribute__((visibility("hidden"))) int ctx_execle(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    if (n >= CTX_MAX_ARGS) {
        va_end(ap);
        errno = E2BIG;
        return -1;
    }
    char *argv[n + 1];
    GATHER(argv, n, arg, ap);
    /* The environment follows the terminating NULL. */
    if (n > 0)
        (void)va_arg(ap, char *);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return ctx_entry_execve(path, argv, envp);
}
