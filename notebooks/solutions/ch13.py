"""Worked solutions to the exercises of chapter 13, "The kernels on a GPU". Try them first."""

import math


def exercise_1(n, m, i, j):
    """The owner of out[i, j] in pairwise_kernel (csrc/cuda/box_iou.cu).

    Columns: j = blockIdx.x * 128 + threadIdx.x, so bx = j // 128 and tx = j % 128.
    Rows: the grid has gridDim.y = min(ceil(n / 4), 8192) row blocks of 4 rows; thread (ty) of row block by starts at
    i0 = 4 by + ty and steps by 4 * gridDim.y. So i0 = i mod (4 gridDim.y), by = i0 // 4, ty = i0 % 4, and the step is
    i // (4 gridDim.y). For n = 50,000: gridDim.y = 8192, a sweep covers 32,768 rows, and out[40000, 300] is computed
    by block (2, 1808), thread (44, 0), in step 1 (its second row).
    """
    rows_per_sweep = 4 * min(math.ceil(n / 4), 8192)
    first = i % rows_per_sweep
    return (j // 128, first // 4), (j % 128, first % 4), i // rows_per_sweep


exercise_2 = {
    # 32 consecutive float32: 128 bytes, 4 sectors (the minimum for 32 lanes of 4 bytes)
    "out_float32": 4,
    # 32 consecutive float64: 256 bytes, 8 sectors
    "out_float64": 8,
    # boxes2[4 j]: one float every 16 bytes, 512 bytes in all: 2 lanes per sector, 16 sectors
    "boxes2_x1": 16,
    # boxes1[4 i]: the same address for all lanes (a broadcast): 1 sector
    "boxes1_x1": 1,
    # (k, l, p, q) for l = 0..31 with 7 x 7 bins: 49 * 4 = 196 bytes apart, every lane in its own sector: 32
    "roi_align_out_channel_fastest": 32,
}


def exercise_3(n):
    """(blocks, working_blocks, words_written) of nms_mask_kernel for n boxes.

    T = ceil(n / 64) tiles; the grid is T x T blocks; block (x, y) returns at once when x < y, so T (T + 1) / 2 work.
    A working block (x, y) has one thread per row box of tile y that exists (min(64, n - 64 y)), each writing one
    word; row tile y has T - y working blocks. For 150 boxes: 9 blocks, 6 working, 64 * 3 + 64 * 2 + 22 * 1 = 342
    words, as the trace of section 13.4 shows.
    """
    tiles = math.ceil(n / 64)
    words = sum(min(64, n - 64 * y) * (tiles - y) for y in range(tiles))
    return tiles * tiles, tiles * (tiles + 1) // 2, words


def exercise_4(bound):
    """S = 62 - e, with e from frexp: B = f * 2^e, 0.5 <= f < 1, so B < 2^e and B * 2^S < 2^62.

    62 - floor(log2 B) is always one more: B >= 2^floor(log2 B), so B * 2^(62 - floor(log2 B)) >= 2^62, and a sum
    could reach the sign bit. For B = 256: floor(log2 256) = 8 gives S = 54 and B * 2^S = 2^62 exactly, not below
    it; frexp(256) = (0.5, 9) gives S = 53.
    """
    return 62 - math.frexp(bound)[1]


def exercise_5(threads_per_block, registers_per_thread, shared_bytes):
    """The tightest of the SM's limits: threads, blocks, registers, shared memory.

    nms_gather_kernel: 2048 // 256 = 8, 32, 65536 // (32 * 256) = 8, 233,472 // 49,152 = 4: four blocks, if a
    launch had more than one.
    """
    limits = [2048 // threads_per_block, 32, 65536 // (registers_per_thread * threads_per_block)]
    if shared_bytes:
        limits.append(228 * 1024 // shared_bytes)
    return min(limits)


exercise_6 = {
    # 2^24 = 16,777,216 is where float32's spacing becomes 2: 2^24 + 1 rounds back to 2^24 (ties to even). Left to
    # right, 2^24 + 1 + 1 loses both ones; the two ones first make 2, which 2^24 + 2 keeps: 16777216 vs 16777218.
    # In fixed point (B = 2^24 + 2 < 2^25, S = 37) every value is an exact integer multiple of 2^-37: both orders
    # add the same three integers.
    "values": [2.0**24, 1.0, 1.0],
    "order_a": [0, 1, 2],
    "order_b": [1, 2, 0],
}

MISTAKES = {
    # forgets the cap on gridDim.y: by = i // 4 and step 0, wrong as soon as n > 32,768
    1: lambda n, m, i, j: ((j // 128, i // 4), (j % 128, i % 4), 0),
    # counts 128-byte cache lines instead of 32-byte sectors
    2: {"out_float32": 1, "out_float64": 2, "boxes2_x1": 4, "boxes1_x1": 1, "roi_align_out_channel_fastest": 32},
    # counts the whole mask, n * T words, as written (the blocks below the diagonal write nothing)
    3: lambda n: (math.ceil(n / 64) ** 2, math.ceil(n / 64) * (math.ceil(n / 64) + 1) // 2, n * math.ceil(n / 64)),
    # 62 - floor(log2 B): for a power of two, B * 2^S = 2^62 exactly, one bit too many
    4: lambda bound: 62 - math.floor(math.log2(bound)),
    # forgets shared memory
    5: lambda threads, registers, shared: min(2048 // threads, 32, 65536 // (registers * threads)),
    # integers add exactly in float32 while they stay below 2^24: the same sum in every order
    6: {"values": [1.0, 2.0, 3.0], "order_a": [0, 1, 2], "order_b": [2, 1, 0]},
}
