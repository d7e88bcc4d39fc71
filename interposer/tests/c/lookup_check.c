/* Builds preload.c into a program of its own and checks that what its symbol lookup
 * found, from this program's place in the loader's list, is what dlsym(RTLD_NEXT, ..)
 * answers from the same place. Prints one line per name; exits 1 on any difference. */
#include "../../src/preload.c"

#include <dlfcn.h>
#include <stdio.h>

static int check(const char *name, void *ours)
{
    void *theirs = dlsym(RTLD_NEXT, name);
    printf("%s %s\n", name, ours == theirs ? (ours ? "same" : "absent") : "DIFFERENT");
    return ours != theirs;
}

int main(void)
{
    int bad = 0;
    bad |= check("execve", (void *)real.execve);
    bad |= check("execv", (void *)real.execv);
    bad |= check("execvp", (void *)real.execvp);
    bad |= check("execvpe", (void *)real.execvpe);
    bad |= check("fexecve", (void *)real.fexecve);
    bad |= check("execveat", (void *)real.execveat);
    bad |= check("posix_spawn", (void *)real.posix_spawn);
    bad |= check("posix_spawnp", (void *)real.posix_spawnp);
    bad |= check("pidfd_spawn", (void *)real.pidfd_spawn);
    bad |= check("pidfd_spawnp", (void *)real.pidfd_spawnp);
    bad |= check("system", (void *)real.system);
    bad |= check("popen", (void *)real.popen);
    bad |= check("pclose", (void *)real.pclose);
    bad |= check("dlsym", (void *)dlsym_fn);
    bad |= check("__errno_location", (void *)errno_location);
    bad |= check("write", (void *)write_fd);
    /* realpath, like posix_spawn, has an older hidden version beside the default one. */
    void *p = NULL;
    bad |= check("realpath", lookup("realpath", &p) == FOUND ? p : NULL);
    bad |= check("no_such_function_anywhere",
                 lookup("no_such_function_anywhere", &p) == ABSENT ? NULL : p);
    /* glibc picks memcpy's body by CPU through an IFUNC resolver: left to the loader. */
    int ifunc = lookup("memcpy", &p) == ASK_LOADER;
    printf("memcpy %s\n", ifunc ? "left to the loader" : "WRONG");
    bad |= !ifunc;
    return bad;
}
