package timeline

import (
	"fmt"
	"slices"
	"testing"
)

// TestListMerge checks list.merge against inserting the same entries one
// by one, over lists whose rings start anywhere in buffers of every size
// up to the capacity, so that both the in-place merge (with its wrap) and
// the merge into a larger buffer are covered.
func TestListMerge(t *testing.T) {
	rng := testRand(t)
	for _, capacity := range []int{1, 2, 3, 7, 8, 9, 16, 64} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			idSpace := uint64(4 * capacity)
			for trial := range 3000 {
				// A list built by pushes (a ring starting anywhere), with
				// some removes (a list not full in a full buffer).
				a := &list{}
				for range rng.IntN(3 * capacity) {
					a.insert(e(1+rng.Uint64N(idSpace)), capacity)
				}
				for range rng.IntN(3) {
					a.remove(1 + rng.Uint64N(idSpace))
				}
				b := &list{buf: slices.Clone(a.buf), head: a.head, n: a.n}
				before := a.all()
				batch := make([]Entry, rng.IntN(2*capacity+1))
				for i := range batch {
					batch[i] = e(rng.Uint64N(idSpace + 1))
				}
				lenBefore := len(a.buf)
				added := a.merge(sortedEntries(batch, capacity), capacity)
				for _, x := range batch {
					b.insert(x, capacity)
				}
				got, want := a.all(), b.all()
				if !slices.Equal(got, want) {
					t.Fatalf("trial %d: merge of %v into %v (head %d, len(buf) %d) = %v, want %v",
						trial, statusIDs(batch), statusIDs(before), b.head, lenBefore, statusIDs(got), statusIDs(want))
				}
				wantAdded := 0
				for _, x := range got {
					if !slices.Contains(before, x) {
						wantAdded++
					}
				}
				if added != wantAdded {
					t.Fatalf("trial %d: merge added %d, want %d", trial, added, wantAdded)
				}
				if len(a.buf) > capacity || a.n > len(a.buf) || (len(a.buf) > 0 && a.head >= len(a.buf)) ||
					(added == 0 && len(a.buf) != lenBefore) || (a.n <= lenBefore && len(a.buf) != lenBefore) {
					t.Fatalf("trial %d: n=%d head=%d len(buf)=%d (was %d), capacity %d", trial, a.n, a.head, len(a.buf), lenBefore, capacity)
				}
			}
		})
	}
}
