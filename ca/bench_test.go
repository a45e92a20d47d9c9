package ca

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkLeafCached is the handshake path once a name is cached.
func BenchmarkLeafCached(b *testing.B) {
	a, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.Leaf(ctx, "bench.example"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Leaf(ctx, "bench.example"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLeafIssue mints a new leaf every time (a cold name).
func BenchmarkLeafIssue(b *testing.B) {
	for _, kt := range []string{KeyECDSA, KeyRSA} {
		b.Run(kt, func(b *testing.B) {
			a, err := New(Options{KeyType: kt})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := a.Leaf(ctx, "n"+strconv.Itoa(i)+".example"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
