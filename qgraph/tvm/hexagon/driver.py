"""The freestanding C program that runs a launch plan (``qgraph.tvm.hexagon.plan``) on Hexagon.

No libc, no TVM runtime: ``RUNTIME_C`` is the little the kernels and the driver need (Linux
syscalls through ``trap0``, ``memcpy`` / ``memset``, ``nearbyintf``, the TVM-FFI error setter,
a workspace allocator); ``program_c`` is the generated part (one static DLTensor per buffer,
one TVM-FFI argument array per call, the calls in order); ``constants_s`` puts the weights
into the ELF with ``.incbin``.

The program reads records from standard input, each the bytes of every input in order, and
for each record writes the bytes of every output in order; it stops at end of input. So one
qemu process runs any number of batches (``HexagonCompiled.run_many``).

Buffers are aligned to 128 bytes, the HVX vector: an aligned HVX load ignores the low bits of
its address, so a less aligned buffer would be read wrong, silently.
"""

from __future__ import annotations

from qgraph.tvm.hexagon.plan import Plan

#: Alignment of every buffer and constant (bytes): one 128-byte HVX vector.
ALIGN = 128

#: Bytes of the bump allocator behind ``TVMBackendAllocWorkspace`` (kernels' scratch tensors).
WORKSPACE_BYTES = 64 << 20

RUNTIME_C = r"""
/* qgraph Hexagon freestanding runtime: what TVM's kernels and the driver call. */
typedef unsigned int size_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned char uint8_t;

static long qg_syscall3(long n, long a, long b, long c) {
  register long r0 __asm__("r0") = a;
  register long r1 __asm__("r1") = b;
  register long r2 __asm__("r2") = c;
  register long r6 __asm__("r6") = n;
  __asm__ volatile("trap0(#1)" : "+r"(r0) : "r"(r1), "r"(r2), "r"(r6) : "memory");
  return r0;
}

enum { SYS_read = 63, SYS_write = 64, SYS_exit_group = 94 };

__attribute__((noreturn)) void qg_exit(int code) {
  for (;;) qg_syscall3(SYS_exit_group, code, 0, 0);
}

/* all n bytes, or fewer only at end of input (returns the count read) */
long qg_read(void *buf, long n) {
  long got = 0;
  while (got < n) {
    long r = qg_syscall3(SYS_read, 0, (long)((char *)buf + got), n - got);
    if (r < 0) qg_exit(3);
    if (r == 0) break;
    got += r;
  }
  return got;
}

void qg_write(int fd, const void *buf, long n) {
  long done = 0;
  while (done < n) {
    long r = qg_syscall3(SYS_write, fd, (long)((const char *)buf + done), n - done);
    if (r <= 0) qg_exit(4);
    done += r;
  }
}

static long qg_strlen(const char *s) { long n = 0; while (s[n]) n++; return n; }

void qg_say(const char *s) { qg_write(2, s, qg_strlen(s)); }

void *memcpy(void *d, const void *s, size_t n) {
  uint8_t *a = d; const uint8_t *b = s;
  while (n--) *a++ = *b++;
  return d;
}
void *memmove(void *d, const void *s, size_t n) {
  uint8_t *a = d; const uint8_t *b = s;
  if (a < b) { while (n--) *a++ = *b++; }
  else { a += n; b += n; while (n--) *--a = *--b; }
  return d;
}
void *memset(void *d, int c, size_t n) {
  uint8_t *a = d;
  while (n--) *a++ = (uint8_t)c;
  return d;
}
void *__hexagon_memcpy_likely_aligned_min32bytes_mult8bytes(void *d, const void *s, size_t n) {
  return memcpy(d, s, n);
}

/* round half to even in the default rounding mode: adding and subtracting 2^23 (2^52) rounds
   to an integer exactly where |x| < 2^23, and every larger float already is one */
float nearbyintf(float x) {
  float a = x < 0 ? -x : x;
  if (!(a < 8388608.0f)) return x;
  float r = (a + 8388608.0f) - 8388608.0f;
  return x < 0 ? -r : r;
}
float rintf(float x) { return nearbyintf(x); }
double nearbyint(double x) {
  double a = x < 0 ? -x : x;
  if (!(a < 4503599627370496.0)) return x;
  double r = (a + 4503599627370496.0) - 4503599627370496.0;
  return x < 0 ? -r : r;
}
double rint(double x) { return nearbyint(x); }

/* expf / logf for float fallback kernels (Softmax, Sigmoid ...): evaluated in double, whose
   error (~1e-16) is far below half a float ULP, then rounded once, as a correctly rounded
   libm (glibc's) does but for the rarest ties. No division: clang-14 makes it a libcall. */
typedef union { double d; uint64_t u; } qg_f64;
static double qg_pow2i(int n) { qg_f64 v; v.u = (uint64_t)(n + 1023) << 52; return v.d; }
float expf(float xf) {
  double x = xf;
  if (xf != xf) return xf;
  if (x > 88.8) return (float)(1e300 * 1e300);
  if (x < -104.0) return 0.0f;
  double k = nearbyint(x * 1.4426950408889634);
  double r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
  /* Taylor to r^13 / 13! (|r| <= 0.347: the rest < 1e-17) */
  double p = 1.0 / 6227020800.0;
  static const double c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                             1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                             1.0 / 6.0, 0.5, 1.0, 1.0};
  for (int i = 0; i < 13; i++) p = p * r + c[i];
  int n = (int)k;
  /* 2^n in two steps: n may be below double's normal range at -1022 only for x < -708 */
  return (float)(p * qg_pow2i(n / 2) * qg_pow2i(n - n / 2));
}
static const double qg_inv_odd[] = {QG_INV_ODD};
float logf(float xf) {
  if (xf != xf) return xf;
  if (xf < 0) { union { float f; uint32_t u; } nan; nan.u = 0x7fc00000u; return nan.f; }
  if (xf == 0) return -(float)(1e300 * 1e300);
  if (xf == (float)(1e300 * 1e300)) return xf;
  qg_f64 v; v.d = xf;
  int e = (int)((v.u >> 52) & 0x7ff) - 1023;
  v.u = (v.u & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL; /* m in [1, 2) */
  double m = v.d;
  if (m > 1.4142135623730951) { m *= 0.5; e += 1; }
  /* log(m) = 2 atanh(s), s = (m - 1) / (m + 1): the divide by Newton steps from a float guess */
  double num = m - 1.0, den = m + 1.0;
  double inv = 0.7;                        /* den in [1.707, 2.415]: |1 - den inv| <= 0.7, squared per step */
  for (int i = 0; i < 8; i++) inv = inv * (2.0 - den * inv);
  double s = num * inv, s2 = s * s, t = 0.0;
  for (int k = 41; k >= 1; k -= 2) t = t * s2 + qg_inv_odd[k >> 1];
  return (float)(2.0 * s * t + e * 0.69314718055994530942);
}

/* sqrtf, correctly rounded: a double estimate (Newton on 1/sqrt, no division), rounded to
   float, then moved by one ULP where the exact square of a rounding midpoint says so (a float
   midpoint has 25 significant bits: its square is exact in double) */
static float qg_next(float f, int up) {
  union { float f; uint32_t u; } v; v.f = f; v.u += up ? 1 : -1; return v.f;
}
float sqrtf(float xf) {
  if (xf != xf || xf < 0) { union { float f; uint32_t u; } nan; nan.u = 0x7fc00000u; return nan.f; }
  if (xf == 0 || xf == (float)(1e300 * 1e300)) return xf;
  double d = xf;
  qg_f64 v; v.d = d; v.u = 0x5fe6eb50c7b537a9ULL - (v.u >> 1);
  double y = v.d;
  for (int i = 0; i < 5; i++) y = y * (1.5 - 0.5 * d * y * y);
  double s = d * y;
  s = s + 0.5 * y * (d - s * s);
  float r = (float)s;
  double hi = 0.5 * ((double)r + (double)qg_next(r, 1)), lo = 0.5 * ((double)r + (double)qg_next(r, 0));
  if (hi * hi < d) r = qg_next(r, 1);
  else if (lo * lo > d) r = qg_next(r, 0);
  return r;
}
float __hexagon_sqrtf(float x) { return sqrtf(x); } /* the name LLVM's Hexagon backend calls */

/* erff: the Maclaurin series in double up to |x| < 4.5 (its largest term ~5e7 leaves an
   absolute error ~5e-9, far below a float ULP of erf there), +-1 beyond */
static const double qg_inv_n[] = {QG_INV_N};
static const double qg_inv_2n1[] = {QG_INV_2N1};
float erff(float xf) {
  if (xf != xf) return xf;
  double x = xf, a = x < 0 ? -x : x;
  if (a >= 4.5) return x < 0 ? -1.0f : 1.0f;
  double x2 = x * x, term = x, sum = x;
  for (int n = 1; n < QG_ERF_TERMS; n++) {
    term *= -x2 * qg_inv_n[n];
    sum += term * qg_inv_2n1[n];
  }
  return (float)(sum * 1.1283791670955126);
}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  qg_say("qgraph hexagon kernel error: ");
  qg_say(kind);
  qg_say(": ");
  for (int32_t i = 0; i < n; i++) if (parts[i]) qg_say(parts[i]);
  qg_say("\n");
}
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *msg) {
  const char *parts[1] = {msg};
  TVMFFIErrorSetRaisedFromCStrParts(kind, parts, 1);
}

/* kernels' scratch tensors: a bump allocator, reset after every kernel call */
static uint8_t qg_workspace[QG_WORKSPACE_BYTES] __attribute__((aligned(QG_ALIGN)));
static uint64_t qg_workspace_top;
void qg_workspace_reset(void) { qg_workspace_top = 0; }
static void *qg_alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  uint64_t at = (qg_workspace_top + QG_ALIGN - 1) & ~(uint64_t)(QG_ALIGN - 1);
  if (at + nbytes > QG_WORKSPACE_BYTES) { qg_say("qgraph hexagon: workspace exhausted\n"); return 0; }
  qg_workspace_top = at + nbytes;
  return qg_workspace + at;
}
static int qg_free_workspace(int device_type, int device_id, void *ptr) { return 0; }
/* TVM's object defines these (weak) where a kernel uses them; these weak ones stand in otherwise */
__attribute__((weak)) void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
__attribute__((weak)) int (*__TVMBackendFreeWorkspace)(int, int, void *);
void qg_runtime_init(void) {
  __TVMBackendAllocWorkspace = qg_alloc_workspace;
  __TVMBackendFreeWorkspace = qg_free_workspace;
}

int qg_main(void);
__attribute__((noreturn)) void _start(void) { qg_exit(qg_main()); }
"""

_HEADER = r"""
/* generated by qgraph.tvm.hexagon.driver: one model's launch plan */
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void *data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t *shape; int64_t *strides; uint64_t byte_offset;
} DLTensor;
typedef struct {
  int32_t type_index; uint32_t zero_padding;
  union { int64_t v_int64; void *v_ptr; };
} TVMFFIAny;
enum { kTVMFFINone = 0, kTVMFFIDLTensorPtr = 7 };
typedef int32_t (*qg_kernel)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);
long qg_read(void *buf, long n);
void qg_write(int fd, const void *buf, long n);
void qg_say(const char *s);
void qg_workspace_reset(void);
void qg_runtime_init(void);
extern const uint8_t qg_constants[];
"""


def _dl_dtype(dtype: str) -> str:
    import tvm

    d = tvm.DataType(dtype)
    return f"{{{int(d.type_code)}, {int(d.bits)}, {int(d.lanes)}}}"


def layout(plan: Plan) -> tuple[dict[int, int], int, dict[int, int], bytes]:
    """Where each buffer lives: ``(arena offsets of input / temp buffers, arena bytes,
    offsets of constants in the constant blob, the blob)``, every offset a multiple of ``ALIGN``."""
    arena, top = {}, 0
    consts, blob = {}, bytearray()
    for b in plan.buffers:
        if b.kind == "const":
            consts[b.index] = len(blob)
            blob += plan.constants[b.index].tobytes()
            blob += bytes(-len(blob) % ALIGN)
        else:
            arena[b.index] = top
            top += -(-max(b.nbytes, 1) // ALIGN) * ALIGN
    return arena, max(top, ALIGN), consts, bytes(blob) or bytes(ALIGN)


def program_c(plan: Plan) -> str:
    """The generated C of ``plan`` (see the module doc for its input and output records)."""
    arena, arena_bytes, consts, _ = layout(plan)
    lines = [_HEADER, f"static uint8_t qg_arena[{arena_bytes}] __attribute__((aligned({ALIGN})));"]
    for b in plan.buffers:
        dims = ", ".join(f"{d}LL" for d in b.shape) or "1LL"
        data = (f"(void *)(qg_constants + {consts[b.index]})" if b.kind == "const"
                else f"(void *)(qg_arena + {arena[b.index]})")
        lines.append(f"static int64_t qg_shape{b.index}[] = {{{dims}}};")
        lines.append(f"static DLTensor qg_t{b.index} = {{{data}, {{1, 0}}, {len(b.shape)}, {_dl_dtype(b.dtype)}, "
                     f"qg_shape{b.index}, 0, 0}};")
    symbols = sorted({launch.symbol for launch in plan.launches})
    for s in symbols:
        lines.append(f"int32_t __tvm_ffi_{s}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);")
    for i, launch in enumerate(plan.launches):
        args = ", ".join(f"{{kTVMFFIDLTensorPtr, 0, {{.v_ptr = &qg_t{a}}}}}" for a in launch.args)
        lines.append(f"static TVMFFIAny qg_args{i}[] = {{{args}}};")
    lines.append("static int qg_run(void) {")
    lines.append("  TVMFFIAny ret;")
    for i, launch in enumerate(plan.launches):
        lines.append("  ret.type_index = kTVMFFINone; qg_workspace_reset();")
        lines.append(f"  if (__tvm_ffi_{launch.symbol}(0, qg_args{i}, {len(launch.args)}, &ret)) "
                     f"{{ qg_say(\"qgraph hexagon: kernel {launch.symbol} failed\\n\"); return 10; }}")
    lines.append("  return 0;")
    lines.append("}")
    lines.append("int qg_main(void) {")
    lines.append("  qg_runtime_init();")
    lines.append("  for (;;) {")
    for n, index in enumerate(plan.inputs):
        nbytes = plan.buffers[index].nbytes
        lines.append(f"    {{ long got = qg_read(qg_arena + {arena[index]}, {nbytes});")
        if n == 0:
            lines.append("      if (got == 0) return 0;")
        lines.append(f"      if (got != {nbytes}) {{ qg_say(\"qgraph hexagon: short input record\\n\"); return 2; }} }}")
    lines.append("    { int rc = qg_run(); if (rc) return rc; }")
    for index in plan.outputs:
        b = plan.buffers[index]
        lines.append(f"    qg_write(1, qg_t{index}.data, {b.nbytes});")
    if not plan.inputs:
        lines.append("    return 0;")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def constants_s(blob_path: str) -> str:
    """The assembly that puts the constant blob (``layout``'s) into the ELF."""
    return (f'  .section .rodata.qg_constants,"a"\n  .p2align 7\n  .globl qg_constants\n'
            f'qg_constants:\n  .incbin "{blob_path}"\n')


def runtime_c() -> str:
    """``RUNTIME_C`` with its sizes filled in."""
    inv_odd = ", ".join(repr(1.0 / k) for k in range(1, 43, 2))
    terms = 120
    inv_n = ", ".join(["0.0"] + [repr(1.0 / k) for k in range(1, terms)])
    inv_2n1 = ", ".join(repr(1.0 / (2 * k + 1)) for k in range(terms))
    return (f"#define QG_ALIGN {ALIGN}\n#define QG_WORKSPACE_BYTES {WORKSPACE_BYTES}ULL\n"
            f"#define QG_INV_ODD {inv_odd}\n#define QG_ERF_TERMS {terms}\n#define QG_INV_N {inv_n}\n"
            f"#define QG_INV_2N1 {inv_2n1}\n" + RUNTIME_C)
