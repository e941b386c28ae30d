/* libm's CPU-dispatched functions, each moved one unit in the last place: glibc picks an FMA, AVX2
   or SSE2 build of sin, cos, exp, log, pow, ... by the CPU's features at run time, so their last
   bits differ between machines. Preloaded (LD_PRELOAD) under the synth5 generator by
   tests/test_synth5_portable.py, which checks that it gives the same bytes and calls none of them
   (nudge_dispatched_calls). hypot is not dispatched (the same code on every CPU) but is nudged too,
   uncounted: Pillow's wide lines use it, and a one-ulp change must not move a pixel either. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>

long nudge_dispatched_calls = 0;

static double up(double r) { return isfinite(r) && r != 0 ? nextafter(r, INFINITY) : r; }
static float upf(float r) { return isfinite(r) && r != 0 ? nextafterf(r, INFINITY) : r; }

#define NUDGE1(name, T, UP, COUNT) \
    T name(T x) { static T (*real)(T); if (!real) real = (T (*)(T))dlsym(RTLD_NEXT, #name); \
                  nudge_dispatched_calls += COUNT; return UP(real(x)); }
#define NUDGE2(name, T, UP, COUNT) \
    T name(T x, T y) { static T (*real)(T, T); if (!real) real = (T (*)(T, T))dlsym(RTLD_NEXT, #name); \
                       nudge_dispatched_calls += COUNT; return UP(real(x, y)); }

NUDGE1(sin, double, up, 1) NUDGE1(cos, double, up, 1) NUDGE1(tan, double, up, 1) NUDGE1(atan, double, up, 1)
NUDGE1(exp, double, up, 1) NUDGE1(log, double, up, 1) NUDGE1(expm1, double, up, 1) NUDGE1(log1p, double, up, 1)
NUDGE1(exp2, double, up, 1) NUDGE1(log2, double, up, 1)
NUDGE2(atan2, double, up, 1) NUDGE2(pow, double, up, 1) NUDGE2(hypot, double, up, 0)
NUDGE1(sinf, float, upf, 1) NUDGE1(cosf, float, upf, 1) NUDGE1(expf, float, upf, 1) NUDGE1(logf, float, upf, 1)
NUDGE1(exp2f, float, upf, 1) NUDGE1(log2f, float, upf, 1) NUDGE2(powf, float, upf, 1)

/* Compiled with -fno-builtin, so these call the nudged sin and cos above, not themselves. */
void sincos(double x, double *s, double *c) { *s = sin(x); *c = cos(x); nudge_dispatched_calls -= 1; }
void sincosf(float x, float *s, float *c) { *s = sinf(x); *c = cosf(x); nudge_dispatched_calls -= 1; }
