/** Small helpers of the client and the React bindings. */

/** The smallest of *values* (Infinity for none), without spreading them into arguments: a
 *  spread of 100,000 numbers overflows the stack. */
export function minOf(values: Iterable<number>): number {
  let min = Infinity;
  for (const v of values) if (v < min) min = v;
  return min;
}

/** The largest of *values* (-Infinity for none); see `minOf`. */
export function maxOf(values: Iterable<number>): number {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  return max;
}
