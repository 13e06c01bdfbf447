"""The OpenCL C program every session runs: all kernels in one source, so that one build (or one
prebuilt binary, which is how FPGA boards run) serves every model on a device."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    """The work shapes compiled into a program. A program reports its own (the `program_info`
    kernel), so that a prebuilt binary runs with the shapes it was compiled with.

    Every kernel requires its work-group size (reqd_work_group_size), so a program can only be
    launched with the group sizes compiled into it: a runtime that compiles per launch shape, as
    pocl does, compiles a known few, which `verify` exercises in a child process before a server
    runs them (see toolchain.py)."""

    tile: int  # side of the block of outputs one matrix-product work-group computes
    work_per_item: int  # outputs per work-item along each side of that block (register blocking)
    tile_k: int  # depth of the slices of both operands staged in local memory per step
    reduce_group: int  # work-items that share one GlobalAveragePool channel
    # > 0: matrix products run `gemm_direct` instead, each work-item computing this many rows by
    # DIRECT_COLUMNS columns straight from global memory, its partial sums in vector registers.
    direct_rows: int = 0
    # Work-items per group of the one-dimensional kernels (the unary and binary ones, softmax,
    # im2col, max_pool), whose global size is rounded up to whole groups.
    flat_group: int = 64

    @property
    def gemm_group(self) -> tuple[int, int, int]:
        items = self.tile // self.work_per_item
        return (items, items, 1)

    def defines(self) -> str:
        return (f"#define TILE {self.tile}\n#define WORK_PER_ITEM {self.work_per_item}\n"
                f"#define TILE_K {self.tile_k}\n#define REDUCE_GROUP {self.reduce_group}\n"
                f"#define DIRECT_ROWS_USED {self.direct_rows}\n#define DIRECT_ROWS {max(self.direct_rows, 1)}\n"
                f"#define FLAT_GROUP {self.flat_group}\n")


# GPUs (and FPGA pipelines) want many work-items: 8 x 8 per 32 x 32 block, 4 x 4 outputs each.
PARALLEL = Tuning(tile=32, work_per_item=4, tile_k=16, reduce_group=64)
# CPU runtimes run the work-items of a group as iterations of a loop, so fat work-items with no
# reduction tree beat many thin ones, and local memory is only a copy of what the caches hold:
# matrix products go straight from global memory, 16 rows by 16 columns a work-item (16 AVX-512
# registers of sums), 2.5-3.7x faster than the tiled kernel's one work-item per 32 x 32 block on pocl.
# Groups of 16 along one dimension: enough groups for pocl's pthread driver to share out the few
# fat work-items of im2col and max_pool among its threads.
SERIAL = Tuning(tile=32, work_per_item=32, tile_k=32, reduce_group=1, direct_rows=16, flat_group=16)

# Columns of the block a `gemm_direct` work-item computes: one float16 vector per row.
DIRECT_COLUMNS = 16

# What the matrix-product kernels can apply to each output before storing it (GemmLayout's
# activation): 0 for nothing, else 1 + the index here. The expressions are UNARY's.
ACTIVATIONS = ("relu", "sigmoid", "tanh")
# gemm_direct only, when a work-item holds whole rows: a softmax along each row.
ROW_SOFTMAX = len(ACTIVATIONS) + 1

# The unary and binary element-wise kernels, as `unary_<name>` / `binary_<name>`, with their
# OpenCL C expressions over `v` (unary) or `u` and `v` (binary).
UNARY = {"relu": "v > 0.0f ? v : 0.0f", "sigmoid": "1.0f / (1.0f + exp(-v))", "tanh": "tanh(v)"}
BINARY = {"add": "u + v", "sub": "u - v", "mul": "u * v", "div": "u / v"}

_BODY = r"""
#define ITEMS (TILE / WORK_PER_ITEM)
#define ROW_SOFTMAX ROW_SOFTMAX_CODE
#define TILE_PAD (TILE + 1)

ACTIVATE_FUNCTION

/* Stages rows [row0, row0 + TILE) and depths [k0, k0 + TILE_K) of a strided matrix in local memory
   as tile[k * TILE_PAD + row], zero outside the matrix. Consecutive work-items read consecutive
   addresses along whichever dimension is contiguous, so a transposed operand loads as fast as a
   plain one; the padded row keeps those writes off a single local-memory bank. */
void stage_tile(__local float *tile, __global const float *matrix, const int rows, const int depth,
                const int row_stride, const int k_stride, const int row0, const int k0)
{
    const int first = get_local_id(1) * ITEMS + get_local_id(0);
    const bool k_contiguous = k_stride == 1;
    for (int i = first; i < TILE * TILE_K; i += ITEMS * ITEMS) {
        const int r = k_contiguous ? i / TILE_K : i % TILE;
        const int k = k_contiguous ? i % TILE_K : i / TILE;
        const int row = row0 + r, kk = k0 + k;
        tile[k * TILE_PAD + r] = (row < rows && kk < depth) ? matrix[row * row_stride + kk * k_stride] : 0.0f;
    }
}

/* Where a batch of matrix products finds its operands (ops.launch_gemm lays it out), and what it
   applies to each output. Passed by value: pocl's launches cost more with every argument. */
typedef struct {
    int m, n, k, inner, activation;
    int a_offset, a_m, a_k, a_outer, a_inner;
    int b_offset, b_k, b_n, b_outer, b_inner;
    int c_offset, c_m, c_n, c_outer, c_inner;
    int y_offset, y_outer, y_inner;
} GemmLayout;

/* Y = activation(alpha * A.B + beta * C) for a batch of M x K by K x N products. Every operand is
   addressed by strides, so transposes, broadcast bias rows or columns, grouped convolutions and
   batched MatMul are all this one kernel. The batch index splits into (outer, inner) =
   (z / inner, z % inner), each with its own stride per operand. A work-group computes a
   TILE x TILE block of Y, each work-item WORK_PER_ITEM x WORK_PER_ITEM outputs of it, from
   TILE_K-deep slices in local memory. Y is dense: row stride N. */
__kernel __attribute__((reqd_work_group_size(ITEMS, ITEMS, 1)))
void gemm(const GemmLayout p, const float alpha, const float beta, __global const float *A,
          __global const float *B, __global const float *C, __global float *Y)
{
    __local float a_tile[TILE_K * TILE_PAD];
    __local float b_tile[TILE_K * TILE_PAD];
    const int M = p.m, N = p.n, K = p.k;
    const int outer_index = get_global_id(2) / p.inner, inner_index = get_global_id(2) % p.inner;
    A += p.a_offset + outer_index * p.a_outer + inner_index * p.a_inner;
    B += p.b_offset + outer_index * p.b_outer + inner_index * p.b_inner;
    C += p.c_offset + outer_index * p.c_outer + inner_index * p.c_inner;
    Y += p.y_offset + outer_index * p.y_outer + inner_index * p.y_inner;
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int row0 = get_group_id(1) * TILE, col0 = get_group_id(0) * TILE;

    float acc[WORK_PER_ITEM][WORK_PER_ITEM];
    for (int i = 0; i < WORK_PER_ITEM; ++i)
        for (int j = 0; j < WORK_PER_ITEM; ++j)
            acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        stage_tile(a_tile, A, M, K, p.a_m, p.a_k, row0, k0);
        stage_tile(b_tile, B, N, K, p.b_n, p.b_k, col0, k0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TILE_K; ++k) {
            float b[WORK_PER_ITEM];
            for (int j = 0; j < WORK_PER_ITEM; ++j)
                b[j] = b_tile[k * TILE_PAD + tx + j * ITEMS];
            for (int i = 0; i < WORK_PER_ITEM; ++i) {
                const float a = a_tile[k * TILE_PAD + ty + i * ITEMS];
                for (int j = 0; j < WORK_PER_ITEM; ++j)
                    acc[i][j] += a * b[j];
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    for (int i = 0; i < WORK_PER_ITEM; ++i) {
        const int row = row0 + ty + i * ITEMS;
        for (int j = 0; j < WORK_PER_ITEM; ++j) {
            const int col = col0 + tx + j * ITEMS;
            if (row >= M || col >= N)
                continue;
            float value = alpha * acc[i][j];
            if (beta != 0.0f)
                value += beta * C[row * p.c_m + col * p.c_n];
            Y[row * N + col] = activate(value, p.activation);
        }
    }
}

/* A row of 16 partial sums, as one vector and as its elements. gemm_direct moves float16 values
   through these and LOAD16 only, never through vload16/vstore16 or any other built-in: those are
   calls into pocl's kernel library, built for the instruction sets the CPU reports (AVX-512), while
   the kernels are compiled for the CPU as LLVM names it, which can lack them (LLVM 14 calls a
   Zen 4 "znver3"); a 512-bit vector then crosses the call under two ABIs, and LLVM aborts. */
typedef union {
    float16 v;
    float s[16];
} Row16;

#define LOAD16(p) ((float16)((p)[0], (p)[1], (p)[2], (p)[3], (p)[4], (p)[5], (p)[6], (p)[7], \
                            (p)[8], (p)[9], (p)[10], (p)[11], (p)[12], (p)[13], (p)[14], (p)[15]))

/* The same product as gemm, for CPUs: no local memory, no barriers. A work-item computes
   DIRECT_ROWS x DIRECT_COLUMNS outputs, one float16 of partial sums per row, reading B's rows as
   vectors when they are contiguous and whole. Rows past M repeat the last row's loads (cheaper than
   testing them) and are not stored. Global size (ceil(N / 16), ceil(M / DIRECT_ROWS), batches). */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_direct(const GemmLayout p, const float alpha, const float beta, __global const float *A,
                 __global const float *B, __global const float *C, __global float *Y)
{
    const int M = p.m, N = p.n, K = p.k, a_m = p.a_m, a_k = p.a_k, b_k = p.b_k, b_n = p.b_n;
    const int outer_index = get_global_id(2) / p.inner, inner_index = get_global_id(2) % p.inner;
    A += p.a_offset + outer_index * p.a_outer + inner_index * p.a_inner;
    B += p.b_offset + outer_index * p.b_outer + inner_index * p.b_inner;
    C += p.c_offset + outer_index * p.c_outer + inner_index * p.c_inner;
    Y += p.y_offset + outer_index * p.y_outer + inner_index * p.y_inner;
    const int col0 = get_global_id(0) * 16, row0 = get_global_id(1) * DIRECT_ROWS;

    int a_rows[DIRECT_ROWS];
    float16 acc[DIRECT_ROWS];
    #pragma unroll
    for (int i = 0; i < DIRECT_ROWS; ++i) {
        a_rows[i] = min(row0 + i, M - 1) * a_m;
        acc[i] = (float16)(0.0f);
    }
    /* a * b + acc rather than fma(): pocl's vector fma took twice as long. */
    if (b_n == 1 && col0 + 16 <= N) {
        for (int k = 0; k < K; ++k) {
            const float16 b = LOAD16(B + k * b_k + col0);
            #pragma unroll
            for (int i = 0; i < DIRECT_ROWS; ++i)
                acc[i] += A[a_rows[i] + k * a_k] * b;
        }
    } else {
        for (int k = 0; k < K; ++k) {
            Row16 b;
            for (int j = 0; j < 16; ++j)
                b.s[j] = col0 + j < N ? B[k * b_k + (col0 + j) * b_n] : 0.0f;
            #pragma unroll
            for (int i = 0; i < DIRECT_ROWS; ++i)
                acc[i] += A[a_rows[i] + k * a_k] * b.v;
        }
    }

    for (int i = 0; i < DIRECT_ROWS && row0 + i < M; ++i) {
        const int row = row0 + i;
        Row16 row_sums;
        row_sums.v = acc[i];
        float *sums = row_sums.s;
        if (p.activation == ROW_SOFTMAX) {
            /* The whole row is in this work-item (N <= 16, so col0 is 0): finish it with a softmax. */
            float top = -INFINITY, total = 0.0f;
            for (int j = 0; j < N; ++j) {
                sums[j] = alpha * sums[j] + (beta != 0.0f ? beta * C[row * p.c_m + j * p.c_n] : 0.0f);
                top = fmax(top, sums[j]);
            }
            for (int j = 0; j < N; ++j) {
                sums[j] = exp(sums[j] - top);
                total += sums[j];
            }
            for (int j = 0; j < N; ++j)
                Y[row * N + j] = sums[j] / total;
            continue;
        }
        for (int j = 0; j < 16 && col0 + j < N; ++j) {
            const int col = col0 + j;
            float value = alpha * sums[j];
            if (beta != 0.0f)
                value += beta * C[row * p.c_m + col * p.c_n];
            Y[row * N + col] = activate(value, p.activation);
        }
    }
}

/* Unfolds convolution windows so that a convolution is one matrix product per image:
   cols[n][(c * KH + i) * KW + j][oh * OW + ow] = x[n][c][oh * SH - PH + i * DH][ow * SW - PW + j * DW],
   zero where the window hangs over the padding. One work-item per row of cols (n, (c * KH + i) * KW + j),
   `count` of them, writing the row's OH * OW values in order: on CPUs 2.5-6x faster than a
   work-item per value, which pays the index divisions per value. */
__kernel __attribute__((reqd_work_group_size(FLAT_GROUP, 1, 1)))
void im2col(__global const float *x, __global float *cols, const int channels, const int height,
            const int width, const int kernel_h, const int kernel_w, const int out_h, const int out_w,
            const int stride_h, const int stride_w, const int pad_h, const int pad_w,
            const int dilation_h, const int dilation_w, const int count)
{
    const int item = get_global_id(0);
    if (item >= count)
        return;
    const int depth = channels * kernel_h * kernel_w, row = item % depth, n = item / depth;
    const int j = row % kernel_w, i = (row / kernel_w) % kernel_h, c = row / (kernel_w * kernel_h);
    x += (n * channels + c) * height * width;
    cols += item * out_h * out_w;
    for (int oh = 0; oh < out_h; ++oh) {
        const int ih = oh * stride_h - pad_h + i * dilation_h;
        const bool row_inside = ih >= 0 && ih < height;
        for (int ow = 0; ow < out_w; ++ow) {
            const int iw = ow * stride_w - pad_w + j * dilation_w;
            cols[oh * out_w + ow] = row_inside && iw >= 0 && iw < width ? x[ih * width + iw] : 0.0f;
        }
    }
}

/* 2-D max pooling, padding never chosen. One work-item per output row (N * C * OH, `count` of
   them), writing its OW values in order. */
__kernel __attribute__((reqd_work_group_size(FLAT_GROUP, 1, 1)))
void max_pool(__global const float *x, __global float *y, const int height, const int width,
              const int kernel_h, const int kernel_w, const int out_h, const int out_w,
              const int stride_h, const int stride_w, const int pad_h, const int pad_w,
              const int dilation_h, const int dilation_w, const int count)
{
    const int item = get_global_id(0);
    if (item >= count)
        return;
    const int oh = item % out_h, plane = item / out_h;
    x += plane * height * width;
    y += item * out_w;
    for (int ow = 0; ow < out_w; ++ow) {
        float best = -INFINITY;
        for (int i = 0; i < kernel_h; ++i) {
            const int ih = oh * stride_h - pad_h + i * dilation_h;
            if (ih < 0 || ih >= height)
                continue;
            for (int j = 0; j < kernel_w; ++j) {
                const int iw = ow * stride_w - pad_w + j * dilation_w;
                if (iw >= 0 && iw < width)
                    best = fmax(best, x[ih * width + iw]);
            }
        }
        y[ow] = best;
    }
}

/* The mean of each row of `count` values: one work-group per row, a tree reduction in local memory. */
__kernel __attribute__((reqd_work_group_size(REDUCE_GROUP, 1, 1)))
void global_average_pool(__global const float *x, __global float *y, const int count)
{
    __local float partial[REDUCE_GROUP];
    const int row = get_group_id(0), lane = get_local_id(0);
    x += row * count;
    float sum = 0.0f;
    for (int i = lane; i < count; i += REDUCE_GROUP)
        sum += x[i];
    partial[lane] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int span = REDUCE_GROUP / 2; span > 0; span /= 2) {
        if (lane < span)
            partial[lane] += partial[lane + span];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lane == 0)
        y[row] = partial[0] / count;
}

/* Softmax over the middle axis of an (outer, length, inner) view, one work-item per row; the
   maximum is subtracted first so that exp never overflows, and each exp is computed once, kept in
   y until the sum is known. Global size outer * inner (`rows`), rounded up to whole groups. */
__kernel __attribute__((reqd_work_group_size(FLAT_GROUP, 1, 1)))
void softmax(__global const float *x, __global float *y, const int length, const int inner, const int rows)
{
    const int row = get_global_id(0);
    if (row >= rows)
        return;
    const int start = (row / inner) * length * inner + row % inner;
    float top = -INFINITY;
    for (int i = 0; i < length; ++i)
        top = fmax(top, x[start + i * inner]);
    float sum = 0.0f;
    for (int i = 0; i < length; ++i) {
        const float e = exp(x[start + i * inner] - top);
        y[start + i * inner] = e;
        sum += e;
    }
    for (int i = 0; i < length; ++i)
        y[start + i * inner] /= sum;
}

/* Where output element `index` reads its two operands under numpy broadcasting. `layout` holds
   the output dimensions, then each operand's strides (0 along a broadcast dimension). */
void broadcast_offsets(int index, __global const int *layout, const int rank, int *a, int *b)
{
    *a = 0;
    *b = 0;
    for (int d = rank - 1; d >= 0; --d) {
        const int position = index % layout[d];
        index /= layout[d];
        *a += position * layout[rank + d];
        *b += position * layout[2 * rank + d];
    }
}

ELEMENTWISE_KERNELS

/* What the program is: which version of the kernels (a checksum of their source), and the work
   shapes compiled into it. */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void program_info(__global uint *info)
{
    info[0] = MLSCORE_ABI;
    info[1] = TILE;
    info[2] = WORK_PER_ITEM;
    info[3] = TILE_K;
    info[4] = REDUCE_GROUP;
    info[5] = DIRECT_ROWS_USED;
    info[6] = FLAT_GROUP;
}
"""


_UNARY_KERNEL = """
__kernel __attribute__((reqd_work_group_size(FLAT_GROUP, 1, 1)))
void unary_{name}(__global const float *x, __global float *y, const int count)
{{
    const int i = get_global_id(0);
    if (i >= count)
        return;
    const float v = x[i];
    y[i] = {expression};
}}
"""

_BINARY_KERNEL = """
__kernel __attribute__((reqd_work_group_size(FLAT_GROUP, 1, 1)))
void binary_{name}(__global const float *a, __global const float *b, __global float *y,
    __global const int *layout, const int rank, const int count)
{{
    const int i = get_global_id(0);
    if (i >= count)
        return;
    int ia, ib;
    broadcast_offsets(i, layout, rank, &ia, &ib);
    const float u = a[ia], v = b[ib];
    y[i] = {expression};
}}
"""


_ACTIVATE = """
/* A matrix product's epilogue: 0 leaves the value, 1 + i applies ACTIVATIONS[i]. */
float activate(const float v, const int activation)
{{
    switch (activation) {{
{cases}
    default: return v;
    }}
}}
"""


def _kernels() -> str:
    elementwise = [*(_UNARY_KERNEL.format(name=name, expression=expression) for name, expression in UNARY.items()),
                   *(_BINARY_KERNEL.format(name=name, expression=expression) for name, expression in BINARY.items())]
    cases = "\n".join(f"    case {code}: return {UNARY[name]};" for code, name in enumerate(ACTIVATIONS, start=1))
    return (_BODY.replace("ACTIVATE_FUNCTION\n", _ACTIVATE.format(cases=cases))
            .replace("ROW_SOFTMAX_CODE", str(ROW_SOFTMAX))
            .replace("ELEMENTWISE_KERNELS\n", "".join(elementwise)))


def abi_stamp() -> int:
    """A checksum of the kernels' source, tuning aside: `program_info` reports the one it was built from."""
    return zlib.crc32(_kernels().encode())


def kernel_source(tuning: Tuning = PARALLEL) -> str:
    """The complete OpenCL C source with its stamp and work shapes: what `build_binary()` compiles,
    and what an FPGA toolchain compiles offline into the binary that `opencl_binary=` loads."""
    return f"#define MLSCORE_ABI {abi_stamp()}u\n" + tuning.defines() + _kernels()


KERNEL_NAMES = frozenset({"gemm", "gemm_direct", "im2col", "max_pool", "global_average_pool", "softmax", "program_info",
                          *(f"unary_{name}" for name in UNARY), *(f"binary_{name}" for name in BINARY)})
