/* The masking loop of sohbet._frames (RFC 6455 §5.3), in C for one reason: gcc's target_clones
 * compiles it for AVX-512, AVX2 and baseline x86-64 and picks one at load time, so masking keeps
 * pace with memcpy (which glibc dispatches the same way) on large payloads. Elsewhere it is the
 * same loop, auto-vectorised for the baseline.
 *
 * The caller guarantees that dst and src hold n bytes. key8 holds the 4-byte key twice, already
 * rotated to the stream offset of dst[0].
 */
#ifndef SOHBET_XOR_H
#define SOHBET_XOR_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
static void sohbet_xor_long(unsigned char *dst, const unsigned char *src, size_t n, const unsigned char *key8)
{
    size_t i = 0, words;
    uint64_t k64, w;
    unsigned char rotated[8];
    /* Bytes until dst sits on a 64-byte line, so the vector stores never straddle two lines. */
    size_t head = (64 - ((uintptr_t)dst & 63)) & 63;
    if (head > n)
        head = n;
    for (; i < head; i++)
        dst[i] = src[i] ^ key8[i & 3];
    for (int j = 0; j < 8; j++)
        rotated[j] = key8[(head + j) & 3];
    memcpy(&k64, rotated, 8);
    words = (n - head) / 8;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
    for (size_t q = 0; q < words; q++) {
        memcpy(&w, src + head + 8 * q, 8); /* unaligned loads stay legal; compiles to a move */
        w ^= k64;
        memcpy(dst + head + 8 * q, &w, 8);
    }
    for (i = head + 8 * words; i < n; i++)
        dst[i] = src[i] ^ key8[i & 3];
}

#endif
