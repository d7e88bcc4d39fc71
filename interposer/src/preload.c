/* libctx_interposer.so, the library an agent runs under (LD_PRELOAD). Every process below
 * the agent loads it, and most never route a launch: CTX_ROUTE is unset, or the process is
 * one of the thousand compiler runs of a build. For them each hook is one indirect call to
 * the real function, and loading this file must cost what any small library costs. So it
 * is C built without libc (build.rs: -nostdlib): no DT_NEEDED, one import (_r_debug), no
 * relocations, and the real functions read from the loaded objects' own symbol tables
 * instead of thirteen dlsym calls (about 20 us per process on a 2-vCPU VM). A process
 * that routes loads the routing library, libctx_route.so beside this file, from the
 * constructor, and each hook forwards to it.
 *
 * Hooks may run in a vfork child or between fork and exec of a threaded program: past
 * set-up they only read what the constructor stored. Nothing here allocates. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h> /* constants only: errno is reached through __errno_location */
#include <link.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EXPORT __attribute__((visibility("default")))

typedef int execve_fn(const char *, char *const[], char *const[]);
typedef int execv_fn(const char *, char *const[]);
typedef int fexecve_fn(int, char *const[], char *const[]);
typedef int execveat_fn(int, const char *, char *const[], char *const[], int);
typedef int spawn_fn(pid_t *, const char *, const posix_spawn_file_actions_t *,
                     const posix_spawnattr_t *, char *const[], char *const[]);
typedef int pidfd_spawn_fn(int *, const char *, const posix_spawn_file_actions_t *,
                           const posix_spawnattr_t *, char *const[], char *const[]);
typedef int system_fn(const char *);
typedef FILE *popen_fn(const char *, const char *);
typedef int pclose_fn(FILE *);

/* The launch functions, real or routing; `Launchers` in the Rust library (state.rs)
 * has this layout. Both libraries come from one build; size and version catch a mix. */
#define CTX_LAUNCHERS_VERSION 1
struct ctx_launchers {
    uint32_t size;
    uint32_t version;
    execve_fn *execve;
    execv_fn *execv;
    execv_fn *execvp;
    execve_fn *execvpe;
    fexecve_fn *fexecve;
    execveat_fn *execveat;
    spawn_fn *posix_spawn;
    spawn_fn *posix_spawnp;
    pidfd_spawn_fn *pidfd_spawn;
    pidfd_spawn_fn *pidfd_spawnp;
    system_fn *system;
    popen_fn *popen;
    pclose_fn *pclose;
};

typedef const struct ctx_launchers *route_init_fn(const struct ctx_launchers *);

/* ------------------------------------------------------------------------------------ */
/* Symbol lookup                                                                         */
/* ------------------------------------------------------------------------------------ */

extern ElfW(Dyn) _DYNAMIC[] __attribute__((visibility("hidden")));

enum lookup { ABSENT, FOUND, ASK_LOADER };

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (; *s; s++)
        h = h * 33 + (unsigned char)*s;
    return h;
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* The loader rewrites most dynamic-section addresses to run-time ones in place, except
 * where that section is read-only (the vDSO); an address below the load base has not
 * been moved yet. */
static uintptr_t at(const struct link_map *m, ElfW(Addr) p)
{
    return p < m->l_addr ? p + m->l_addr : p;
}

static enum lookup found(const struct link_map *m, const ElfW(Sym) *sym, void **out)
{
    /* An IFUNC resolver or a symbol of another kind: the loader's rules apply. */
    if (ELF64_ST_TYPE(sym->st_info) != STT_FUNC || sym->st_value == 0)
        return ASK_LOADER;
    *out = (void *)(m->l_addr + sym->st_value);
    return FOUND;
}

/* `name` in one object's GNU hash table. As the loader does for a lookup without a
 * version: an unversioned definition wins at once, else the one default version. */
static enum lookup lookup_in(const struct link_map *m, const char *name, uint32_t hash,
                             void **out)
{
    uintptr_t strtab = 0, symtab = 0, gnu = 0, versym = 0;
    if (m->l_ld == NULL)
        return ABSENT;
    for (const ElfW(Dyn) *d = m->l_ld; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_STRTAB: strtab = at(m, d->d_un.d_ptr); break;
        case DT_SYMTAB: symtab = at(m, d->d_un.d_ptr); break;
        case DT_GNU_HASH: gnu = at(m, d->d_un.d_ptr); break;
        case DT_VERSYM: versym = at(m, d->d_un.d_ptr); break;
        }
    }
    if (strtab == 0 || symtab == 0)
        return ABSENT;
    if (gnu == 0) /* only the old SysV hash table: rare enough to leave to the loader */
        return ASK_LOADER;
    const uint32_t *head = (const uint32_t *)gnu;
    uint32_t nbuckets = head[0], symoffset = head[1], bloom_size = head[2], shift = head[3];
    if (nbuckets == 0 || bloom_size == 0)
        return ABSENT;
    const uint64_t *bloom = (const uint64_t *)(head + 4);
    uint64_t word = bloom[(hash / 64) % bloom_size];
    uint64_t mask = (1ull << (hash % 64)) | (1ull << ((hash >> shift) % 64));
    if ((word & mask) != mask)
        return ABSENT;
    const uint32_t *buckets = (const uint32_t *)(bloom + bloom_size);
    const uint32_t *chain = buckets + nbuckets;
    uint32_t idx = buckets[hash % nbuckets];
    if (idx < symoffset)
        return ABSENT;
    const ElfW(Sym) *versioned = NULL;
    int defaults = 0;
    for (;; idx++) {
        uint32_t h = chain[idx - symoffset];
        if ((h | 1) == (hash | 1)) {
            const ElfW(Sym) *sym = (const ElfW(Sym) *)symtab + idx;
            if (sym->st_shndx != SHN_UNDEF && ELF64_ST_BIND(sym->st_info) != STB_LOCAL &&
                streq((const char *)strtab + sym->st_name, name)) {
                uint16_t v = versym ? ((const uint16_t *)versym)[idx] : 1;
                if ((v & 0x7fff) < 2)
                    return found(m, sym, out);
                if (!(v & 0x8000)) { /* not a hidden, older version */
                    defaults++;
                    versioned = sym;
                }
            }
        }
        if (h & 1)
            break;
    }
    if (defaults == 0)
        return ABSENT;
    return defaults == 1 ? found(m, versioned, out) : ASK_LOADER;
}

/* Where lookups start, and an object they skip. */
static const struct link_map *search_from, *search_skip, *self;

static enum lookup lookup(const char *name, void **out)
{
    uint32_t hash = gnu_hash(name);
    for (const struct link_map *l = search_from; l != NULL; l = l->l_next) {
        if (l == search_skip)
            continue;
        enum lookup r = lookup_in(l, name, hash, out);
        if (r != ABSENT)
            return r;
    }
    return ABSENT;
}

/* Preloaded, the objects after this one in the loader's list are what RTLD_NEXT searches
 * (in that order for those loaded at start-up), and libc is among them. Opened with
 * dlopen instead, libc comes before: then every object but this one is searched. */
static void find_self(void)
{
    for (self = _r_debug.r_map; self != NULL && self->l_ld != _DYNAMIC; self = self->l_next)
        ;
    void *p;
    search_from = self ? self->l_next : NULL;
    search_skip = NULL;
    if (self == NULL || lookup("execve", &p) != FOUND) {
        search_from = _r_debug.r_map;
        search_skip = self;
    }
}

/* ------------------------------------------------------------------------------------ */
/* Load-time set-up                                                                      */
/* ------------------------------------------------------------------------------------ */

static struct ctx_launchers real;
/* The routing library's launchers; NULL when not routing or when it failed to load. */
static const struct ctx_launchers *route;
static int routing, ready;
static char context[256], load_error[768];

static int *(*errno_location)(void);
static ssize_t (*write_fd)(int, const void *, size_t);

static void *(*dlsym_fn)(void *, const char *);

static void *resolve(const char *name)
{
    void *p = NULL;
    switch (lookup(name, &p)) {
    case FOUND: return p;
    case ABSENT: return NULL;
    case ASK_LOADER: break;
    }
    /* The return address inside this object makes RTLD_NEXT mean "after us". */
    return dlsym_fn ? dlsym_fn(RTLD_NEXT, name) : NULL;
}

/* A NUL-terminated copy that always fits `cap` (truncated if need be). */
static size_t append(char *buf, size_t len, size_t cap, const char *s)
{
    while (s && *s && len + 1 < cap)
        buf[len++] = *s++;
    buf[len] = '\0';
    return len;
}

static const char *env_get(char **envp, const char *name)
{
    for (; envp && *envp; envp++) {
        const char *e = *envp, *n = name;
        while (*n && *e == *n)
            e++, n++;
        if (*n == '\0' && *e == '=')
            return e + 1;
    }
    return NULL;
}

static void load_routing(void)
{
    void *(*dlopen_fn)(const char *, int) = resolve("dlopen");
    char *(*dlerror_fn)(void) = resolve("dlerror");
    char path[4096];
    size_t len = 0, dir = 0;
    if (self != NULL)
        len = append(path, 0, sizeof path, self->l_name);
    for (size_t i = 0; i < len; i++)
        if (path[i] == '/')
            dir = i + 1;
    append(path, dir, sizeof path, "libctx_route.so");
    if (dlopen_fn == NULL || dlsym_fn == NULL) {
        append(load_error, 0, sizeof load_error, "no dlopen in this process");
        return;
    }
    void *h = dlopen_fn(path, RTLD_NOW | RTLD_LOCAL);
    route_init_fn *init = h ? (route_init_fn *)dlsym_fn(h, "ctx_route_init") : NULL;
    if (init == NULL) {
        size_t n = append(load_error, 0, sizeof load_error, "cannot load the routing library: ");
        append(load_error, n, sizeof load_error, dlerror_fn ? dlerror_fn() : path);
        return;
    }
    route = init(&real);
    if (route == NULL) {
        size_t n = append(load_error, 0, sizeof load_error, path);
        append(load_error, n, sizeof load_error, " is from another build of ctx");
    }
}

/* `envp` is the constructor's; NULL when a hook runs first (another library's
 * constructor launching before ours ran), then getenv reads it. Two threads racing here
 * at start-up store the same values. */
static void setup(char **envp)
{
    if (__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        return;
    find_self();
    dlsym_fn = resolve("dlsym");
    errno_location = resolve("__errno_location");
    write_fd = resolve("write");
    real.size = sizeof real;
    real.version = CTX_LAUNCHERS_VERSION;
    real.execve = resolve("execve");
    real.execv = resolve("execv");
    real.execvp = resolve("execvp");
    real.execvpe = resolve("execvpe");
    real.fexecve = resolve("fexecve");
    real.execveat = resolve("execveat");
    real.posix_spawn = resolve("posix_spawn");
    real.posix_spawnp = resolve("posix_spawnp");
    real.pidfd_spawn = resolve("pidfd_spawn");
    real.pidfd_spawnp = resolve("pidfd_spawnp");
    real.system = resolve("system");
    real.popen = resolve("popen");
    real.pclose = resolve("pclose");
    const char *r;
    if (envp != NULL) {
        r = env_get(envp, "CTX_ROUTE");
    } else {
        char *(*getenv_fn)(const char *) = resolve("getenv");
        r = getenv_fn ? getenv_fn("CTX_ROUTE") : NULL;
    }
    if (r != NULL && *r != '\0') {
        routing = 1;
        append(context, 0, sizeof context, r);
        load_routing();
    }
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
}

/* Runs at load, before main and before any hook can be reached: the process is still
 * single-threaded and no vfork is in flight. glibc passes argc, argv and envp. */
__attribute__((constructor)) static void ctx_load(int argc, char **argv, char **envp)
{
    (void)argc;
    (void)argv;
    setup(envp);
}

/* ------------------------------------------------------------------------------------ */
/* Hooks                                                                                 */
/* ------------------------------------------------------------------------------------ */

static int set_errno(int e)
{
    if (errno_location)
        *errno_location() = e;
    return -1;
}

/* What the hooks call: the routing library's launchers, the real ones, or NULL when
 * routing is asked for and its library did not load. */
static const struct ctx_launchers *launchers(void)
{
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        setup(NULL);
    return routing ? route : &real;
}

/* Fail closed, in one line: ctx: cannot route "NAME" to context CTX: WHY. */
static int refuse(const char *name)
{
    char line[1536];
    size_t n = append(line, 0, sizeof line - 1, "ctx: cannot route \"");
    n = append(line, n, sizeof line - 1, name ? name : "?");
    n = append(line, n, sizeof line - 1, "\" to context ");
    n = append(line, n, sizeof line - 1, context);
    n = append(line, n, sizeof line - 1, ": ");
    n = append(line, n, sizeof line - 1, load_error);
    line[n++] = '\n';
    if (write_fd)
        write_fd(2, line, n);
    return EACCES;
}

/* Every hook's body: one indirect call, to the routing library or the real function.
 * FAIL turns an errno into the hook's failure: set_errno for the exec family and system
 * (-1, errno), error_code for the spawn family (the error is the result). NAME is what a
 * refusal names. */
#define FORWARD(fn, FAIL, name, ...)                                                     \
    do {                                                                                 \
        const struct ctx_launchers *l_ = launchers();                                    \
        if (l_ == NULL)                                                                  \
            return FAIL(refuse(name));                                                   \
        return l_->fn ? l_->fn(__VA_ARGS__) : FAIL(ENOSYS);                              \
    } while (0)

static int error_code(int e)
{
    return e;
}

/* Called by the exported ones and by execl*: a call to an exported name from inside would
 * go through the PLT (it can be interposed), one more relocation for every process. */
static int do_execve(const char *path, char *const argv[], char *const envp[])
{
    FORWARD(execve, set_errno, path, path, argv, envp);
}

static int do_execv(const char *path, char *const argv[])
{
    FORWARD(execv, set_errno, path, path, argv);
}

static int do_execvp(const char *file, char *const argv[])
{
    FORWARD(execvp, set_errno, file, file, argv);
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    return do_execve(path, argv, envp);
}

EXPORT int execv(const char *path, char *const argv[])
{
    return do_execv(path, argv);
}

EXPORT int execvp(const char *file, char *const argv[])
{
    return do_execvp(file, argv);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    FORWARD(execvpe, set_errno, file, file, argv, envp);
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    FORWARD(fexecve, set_errno, argv ? argv[0] : NULL, fd, argv, envp);
}

EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[],
                    int flags)
{
    FORWARD(execveat, set_errno, path, dirfd, path, argv, envp, flags);
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    FORWARD(posix_spawn, error_code, path, pid, path, fa, attr, argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    FORWARD(posix_spawnp, error_code, file, pid, file, fa, attr, argv, envp);
}

/* glibc 2.39 added these. They are exported anyway, so that a program built against a
 * newer glibc cannot use them to bypass routing. */
EXPORT int pidfd_spawn(int *pidfd, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    FORWARD(pidfd_spawn, error_code, path, pidfd, path, fa, attr, argv, envp);
}

EXPORT int pidfd_spawnp(int *pidfd, const char *file, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    FORWARD(pidfd_spawnp, error_code, file, pidfd, file, fa, attr, argv, envp);
}

EXPORT int system(const char *command)
{
    FORWARD(system, set_errno, "sh", command);
}

EXPORT FILE *popen(const char *command, const char *mode)
{
    const struct ctx_launchers *l = launchers();
    if (l == NULL) {
        set_errno(refuse("sh"));
        return NULL;
    }
    if (l->popen == NULL) {
        set_errno(ENOSYS);
        return NULL;
    }
    return l->popen(command, mode);
}

EXPORT int pclose(FILE *stream)
{
    const struct ctx_launchers *l = launchers();
    if (l == NULL) /* no routed popen can have succeeded: the stream is a local one */
        l = &real;
    return l->pclose ? l->pclose(stream) : set_errno(ENOSYS);
}

/* ------------------------------------------------------------------------------------ */
/* The variadic execl family: the NULL-terminated list gathered into a stack array (no   */
/* heap: they may run between vfork and exec).                                           */
/* ------------------------------------------------------------------------------------ */

/* A bound well above what the kernel accepts (ARG_MAX is 2 MiB of pointers and strings),
 * so the stack array stays finite even for a corrupt, unterminated list. */
#define CTX_MAX_ARGS (256 * 1024)

static size_t count_args(const char *arg0, va_list ap)
{
    size_t n = 0;
    va_list cp;
    va_copy(cp, ap);
    if (arg0 != NULL) {
        n = 1;
        while (n < CTX_MAX_ARGS && va_arg(cp, const char *) != NULL)
            n++;
    }
    va_end(cp);
    return n;
}

#define GATHER(argv, n, arg0, ap)                                                        \
    do {                                                                                 \
        if ((n) > 0)                                                                     \
            (argv)[0] = (char *)(arg0);                                                  \
        for (size_t i_ = 1; i_ < (n); i_++)                                              \
            (argv)[i_] = va_arg(ap, char *);                                             \
        (argv)[(n)] = NULL;                                                              \
    } while (0)

EXPORT int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    if (n >= CTX_MAX_ARGS) {
        va_end(ap);
        return set_errno(E2BIG);
    }
    char *argv[n + 1];
    GATHER(argv, n, arg, ap);
    va_end(ap);
    return do_execv(path, argv);
}

EXPORT int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    if (n >= CTX_MAX_ARGS) {
        va_end(ap);
        return set_errno(E2BIG);
    }
    char *argv[n + 1];
    GATHER(argv, n, arg, ap);
    va_end(ap);
    return do_execvp(file, argv);
}

EXPORT int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    if (n >= CTX_MAX_ARGS) {
        va_end(ap);
        return set_errno(E2BIG);
    }
    char *argv[n + 1];
    GATHER(argv, n, arg, ap);
    /* The environment follows the terminating NULL. */
    if (n > 0)
        (void)va_arg(ap, char *);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return do_execve(path, argv, envp);
}
