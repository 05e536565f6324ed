package shard

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
)

// propSpace is the small key space random mutations are drawn from.
type propSpace struct {
	shards []string
	keys   []string
	owners []uint64
	ids    []uint64
}

func newPropSpace(rng *rand.Rand) propSpace {
	sp := propSpace{shards: []string{shA, shB}}
	for i := range 30 {
		sp.keys = append(sp.keys, fmt.Sprintf("k%02d", i))
	}
	for o := range 5 {
		sp.owners = append(sp.owners, uint64(o+1))
	}
	for m := time.January; m <= time.March; m++ {
		for range 6 {
			id := ids.NewID(time.Date(2026, m, 1+rng.IntN(28), rng.IntN(24), 0, rng.IntN(60), 0, time.UTC),
				uint32(1+rng.IntN(3)), 0, uint32(rng.IntN(4)))
			sp.ids = append(sp.ids, uint64(id))
		}
	}
	// Two ids in the same millisecond, and the first and last instants of
	// months, to exercise boundaries.
	sp.ids = append(sp.ids,
		uint64(ids.MinIDForMonth(month2026(time.February))),
		uint64(ids.MinIDForMonth(month2026(time.March)))-1,
		uint64(ids.NewID(time.Date(2026, 3, 31, 23, 59, 59, 999e6, time.UTC), 1, 0, 0)),
		uint64(ids.NewID(time.Date(2026, 3, 31, 23, 59, 59, 999e6, time.UTC), 1, 0, 1)),
	)
	return sp
}

// randMutations draws n mutations from sp; about one in ten repeats an
// earlier one exactly.
func (sp propSpace) randMutations(rng *rand.Rand, n int) []Mutation {
	nowMs := testNow.UnixMilli()
	out := make([]Mutation, 0, n)
	for len(out) < n {
		if len(out) > 0 && rng.IntN(10) == 0 {
			out = append(out, out[rng.IntN(len(out))])
			continue
		}
		// Versions from a small space, so that equal versions of different
		// writes (decided by the tie rule of wins) are common.
		v := Version{
			HLC:  ids.MakeTimestamp(nowMs-1-int64(rng.IntN(8)), uint16(rng.IntN(2))),
			Site: uint32(1 + rng.IntN(3)),
		}
		sh := sp.shards[rng.IntN(len(sp.shards))]
		del := rng.IntN(10) < 3
		if rng.IntN(2) == 0 {
			k := sp.keys[rng.IntN(len(sp.keys))]
			if del {
				out = append(out, delM(sh, k, v))
			} else {
				out = append(out, putM(sh, k, fmt.Sprintf("v%d", rng.IntN(3)), v))
			}
		} else {
			o, id := sp.owners[rng.IntN(len(sp.owners))], sp.ids[rng.IntN(len(sp.ids))]
			if del {
				out = append(out, remM(sh, o, id, v))
			} else {
				out = append(out, appM(sh, o, id, []string{"", "a", "bb"}[rng.IntN(3)], v))
			}
		}
	}
	return out
}

// propModel is the expected state: for every key, the mutation that wins
// under last-writer-wins with the tie rule of wins (equal versions compare
// the encoded records).
type propModel map[string]Mutation

func modelKey(m *Mutation) string {
	switch m.Op {
	case OpPut, OpDelete:
		return fmt.Sprintf("%s/c/%s/%s", m.Shard, m.Table, m.Key)
	}
	return fmt.Sprintf("%s/i/%s/%d/%d", m.Shard, m.Table, m.Owner, m.ID)
}

func modelEnc(m *Mutation) []byte {
	tomb := m.Op == OpDelete || m.Op == OpRemove
	val := m.Value
	if m.Op == OpAppend || m.Op == OpRemove {
		val = m.Payload
	}
	return encodeRecord(m.Version, tomb, val)
}

func (pm propModel) add(m Mutation) {
	k := modelKey(&m)
	cur, ok := pm[k]
	if !ok {
		pm[k] = m
		return
	}
	switch m.Version.Compare(cur.Version) {
	case 1:
		pm[k] = m
	case 0:
		if bytes.Compare(modelEnc(&m), modelEnc(&cur)) > 0 {
			pm[k] = m
		}
	}
}

// entries returns the model's live entries of owner in shard, newest first.
func (pm propModel) entries(shard string, owner uint64) []Entry {
	var out []Entry
	for _, m := range pm {
		if m.Shard == shard && m.Op == OpAppend && m.Owner == owner {
			out = append(out, Entry{ID: m.ID, Payload: m.Payload, Version: m.Version})
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		switch {
		case a.ID > b.ID:
			return -1
		case a.ID < b.ID:
			return 1
		}
		return 0
	})
	return out
}

func monthCountsOf(es []Entry) []MonthCount {
	var out []MonthCount
	for _, e := range es { // newest first
		m := ids.ID(e.ID).Month()
		if len(out) == 0 || out[len(out)-1].Month != m {
			out = append(out, MonthCount{Month: m})
		}
		out[len(out)-1].Count++
	}
	return out
}

func entriesEqual(a, b []Entry) bool {
	return slices.EqualFunc(a, b, func(x, y Entry) bool {
		return x.ID == y.ID && bytes.Equal(x.Payload, y.Payload) && x.Version == y.Version
	})
}

// applyShuffled applies muts to s in a random order, in random batches of 1
// to 20, re-applying a random earlier batch now and then.
func applyShuffled(t *testing.T, rng *rand.Rand, s *Store, muts []Mutation) {
	t.Helper()
	order := slices.Clone(muts)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var batches [][]Mutation
	for len(order) > 0 {
		n := min(len(order), 1+rng.IntN(20))
		batches = append(batches, order[:n])
		order = order[n:]
	}
	for i, b := range batches {
		mustApply(t, s, b...)
		if rng.IntN(4) == 0 {
			mustApply(t, s, batches[rng.IntN(i+1)]...)
		}
	}
}

func TestPropertyConvergence(t *testing.T) {
	rng := testRand(t)
	rounds, perRound := 20, 300
	if testing.Short() {
		rounds = 5
	}
	const stores = 4
	ctx := context.Background()
	for round := range rounds {
		sp := newPropSpace(rng)
		muts := sp.randMutations(rng, perRound)
		model := propModel{}
		for _, m := range muts {
			model.add(m)
		}
		ss := make([]*Store, stores)
		for i := range ss {
			ss[i] = newTestStore(t, nil)
			applyShuffled(t, rng, ss[i], muts)
		}
		for _, sh := range sp.shards {
			d0 := mustDigest(t, ss[0], sh, nil, nil)
			for i := 1; i < stores; i++ {
				if d := mustDigest(t, ss[i], sh, nil, nil); d != d0 {
					t.Fatalf("round %d shard %s: digest of store %d %v != store 0 %v", round, sh, i, d, d0)
				}
			}
			for _, o := range sp.owners {
				want := model.entries(sh, o)
				wantMonths := monthCountsOf(want)
				for i, s := range ss {
					n, months := mustCount(t, s, sh, o)
					if n != uint64(len(want)) || !slices.Equal(months, wantMonths) {
						t.Fatalf("round %d shard %s owner %d store %d: Count %d %v, model %d %v",
							round, sh, o, i, n, months, len(want), wantMonths)
					}
					got := rangeAll(t, s, sh, o, 1+rng.IntN(7))
					if !entriesEqual(got, want) {
						t.Fatalf("round %d shard %s owner %d store %d: Range %v\nmodel %v", round, sh, o, i, got, want)
					}
				}
			}
			keys := make([][]byte, len(sp.keys))
			for i, k := range sp.keys {
				keys[i] = []byte(k)
			}
			for i, s := range ss {
				vs, err := s.MultiGet(ctx, sh, tContent, keys)
				if err != nil {
					t.Fatal(err)
				}
				for j, k := range sp.keys {
					m, ok := model[modelKey(&Mutation{Op: OpPut, Shard: sh, Table: tContent, Key: []byte(k)})]
					live := ok && m.Op == OpPut
					switch {
					case live != (vs[j] != nil):
						t.Fatalf("round %d shard %s store %d key %s: live %v, model live %v", round, sh, i, k, vs[j] != nil, live)
					case live && (!bytes.Equal(vs[j].Value, m.Value) || vs[j].Version != m.Version):
						t.Fatalf("round %d shard %s store %d key %s: %q@%v, model %q@%v", round, sh, i, k, vs[j].Value, vs[j].Version, m.Value, m.Version)
					}
				}
			}
		}
		for _, s := range ss {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestPropertyApplyTwiceSameDigest(t *testing.T) {
	rng := testRand(t)
	for round := range 5 {
		sp := newPropSpace(rng)
		batch := sp.randMutations(rng, 200)
		once, twice := newTestStore(t, nil), newTestStore(t, nil)
		mustApply(t, once, batch...)
		mustApply(t, twice, batch...)
		for i, o := range mustApply(t, twice, batch...) {
			if o != Superseded {
				t.Fatalf("round %d: second application of mutation %d (%v) gave %v", round, i, batch[i].Op, o)
			}
		}
		for _, sh := range sp.shards {
			d1, d2 := mustDigest(t, once, sh, nil, nil), mustDigest(t, twice, sh, nil, nil)
			if d1 != d2 {
				t.Fatalf("round %d shard %s: applied once %v, twice %v", round, sh, d1, d2)
			}
			if d1.Records == 0 {
				t.Fatalf("round %d shard %s: empty digest", round, sh)
			}
			for _, o := range sp.owners {
				n1, m1 := mustCount(t, once, sh, o)
				n2, m2 := mustCount(t, twice, sh, o)
				if n1 != n2 || !slices.Equal(m1, m2) {
					t.Fatalf("round %d shard %s owner %d: counts %d %v vs %d %v", round, sh, o, n1, m1, n2, m2)
				}
			}
		}
	}
}
