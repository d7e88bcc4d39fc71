/* What waking a sleeping thread costs on this machine: one thread writes a pipe, the other,
 * blocked reading it, answers on a second pipe; the time from the write to the wakee's
 * first instruction. Prints "IDLE_P50 IDLE_P90 SAME_P50" in microseconds: the wakee pinned
 * to another CPU that had been idle for 2 ms before each wake-up (on a virtual machine the
 * hypervisor has to wake that vCPU first), and the wakee on the waker's own CPU. Used by
 * scripts/bench.sh to show what each hand-off of a routed launch between processes and
 * threads can cost here. "n/a n/a n/a" with fewer than two CPUs. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 300

static int ping[2], pong[2];
static int wakee_cpu;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

static void *wakee(void *unused) {
    (void)unused;
    pin(wakee_cpu);
    double sent;
    while (read(ping[0], &sent, sizeof sent) == sizeof sent) {
        double woke = now_ns();
        if (write(pong[1], &woke, sizeof woke) != sizeof woke) break;
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Wake-up latencies in us, sorted, of ROUNDS wake-ups of a thread on `cpu` from CPU 0. */
static void measure(int cpu, double *lat) {
    pthread_t t;
    if (pipe(ping) != 0 || pipe(pong) != 0) { perror("pipe"); exit(1); }
    wakee_cpu = cpu;
    pthread_create(&t, NULL, wakee, NULL);
    usleep(10000);
    for (int i = 0; i < ROUNDS; i++) {
        usleep(2000);
        double sent = now_ns(), woke;
        if (write(ping[1], &sent, sizeof sent) != sizeof sent || read(pong[0], &woke, sizeof woke) != sizeof woke) {
            perror("wake_cost");
            exit(1);
        }
        lat[i] = (woke - sent) / 1000;
    }
    close(ping[1]);
    pthread_join(t, NULL);
    close(ping[0]);
    close(pong[0]);
    close(pong[1]);
    qsort(lat, ROUNDS, sizeof *lat, cmp);
}

int main(void) {
    static double idle[ROUNDS], same[ROUNDS];
    if (pin(0) != 0 || sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        puts("n/a n/a n/a");
        return 0;
    }
    measure(1, idle);
    measure(0, same);
    printf("%.0f %.0f %.1f\n", idle[ROUNDS / 2], idle[ROUNDS * 9 / 10], same[ROUNDS / 2]);
    return 0;
}
