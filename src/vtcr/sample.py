"""A built-in reasoning text (written for vtcr) so demos run with no data or network."""

QUESTION = "How many positive integers n <= 100 make n^2 + n + 41 a multiple of 43?"

REASONING = r"""<think>
Okay, so I need to count the positive integers $n \le 100$ for which $43 \mid n^2 + n + 41$.

Let me rewrite the condition modulo 43. Since $41 \equiv -2 \pmod{43}$, I need
$$n^2 + n - 2 \equiv 0 \pmod{43}.$$

Factor the left side: $n^2 + n - 2 = (n + 2)(n - 1)$.

43 is prime, so a product is divisible by 43 exactly when one of the factors is. That gives two cases:
- $n - 1 \equiv 0$, i.e. $n \equiv 1 \pmod{43}$;
- $n + 2 \equiv 0$, i.e. $n \equiv 41 \pmod{43}$.

Wait, let me double-check the factorisation: $(n+2)(n-1) = n^2 - n + 2n - 2 = n^2 + n - 2$. Yes.

Now count each residue class in $1 \le n \le 100$.

Case $n \equiv 1$: the values are $1, 44, 87$. The next one would be $130 > 100$. So 3 values.

Case $n \equiv 41$: the values are $41, 84$. The next one would be $127 > 100$. So 2 values.

The two classes are different (1 is not 41 mod 43), so there is no overlap.

Let me sanity-check one value from each class.
For $n = 44$: $44^2 + 44 + 41 = 1936 + 85 = 2021 = 43 \cdot 47$. Good.
For $n = 41$: $41^2 + 41 + 41 = 1681 + 82 = 1763 = 43 \cdot 41$. Good.
And a value outside both classes, $n = 2$: $4 + 2 + 41 = 47$, not a multiple of 43. Consistent.

So the total is $3 + 2 = 5$.
</think>

The condition is $(n+2)(n-1) \equiv 0 \pmod{43}$, so $n \equiv 1$ or $n \equiv 41 \pmod{43}$: that is $n \in \{1, 41, 44, 84, 87\}$.

<answer>5</answer>"""
