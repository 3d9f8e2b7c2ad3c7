/* LD_PRELOAD shim: the process sees an x86-64 CPU with AVX2 but no AVX-512 and no VNNI (the
 * CPUID feature bits of both cleared), so onnxruntime's MLAS picks the kernels it runs on such a
 * CPU (u8 x s8 products added in neighbouring pairs in a saturating int16, vpmaddubsw) at native
 * speed. Uses Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag `cpuid_fault`): every
 * CPUID instruction traps, the SIGSEGV handler executes it with faulting briefly off and returns
 * the masked result. The flag is inherited by the threads the process starts later.
 * Without CPUID faulting the constructor prints a message and exits 3 (nothing is masked).
 * Build: cc -O2 -shared -fPIC -o cpuid_avx2.so cpuid_avx2.c */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)g[REG_RIP];
    (void)si;
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        signal(sig, SIG_DFL);
        return;
    }
    unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
    unsigned a, b, c, d;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && sub == 0) {
        /* AVX512F DQ IFMA PF ER CD BW VL */
        b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
               (1u << 30) | (1u << 31));
        /* AVX512_VBMI VBMI2 VNNI BITALG VPOPCNTDQ */
        c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* AVX512_4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 AVX512_FP16 AMX-TILE AMX-INT8 */
        d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
               (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* AVX-VNNI AVX512_BF16 AVX-IFMA; AVX-VNNI-INT8 AVX-NE-CONVERT AVX-VNNI-INT16 */
        a &= ~((1u << 4) | (1u << 5) | (1u << 23));
        d &= ~((1u << 4) | (1u << 5) | (1u << 10));
    }
    g[REG_RAX] = a;
    g[REG_RBX] = b;
    g[REG_RCX] = c;
    g[REG_RDX] = d;
    g[REG_RIP] += 2;
}

__attribute__((constructor)) static void init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid_avx2: this kernel/CPU has no CPUID faulting (cpuid_fault)\n");
        _exit(3);
    }
}
