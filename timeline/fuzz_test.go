package timeline

import (
	"slices"
	"testing"
)

// unpackAll reads b as packed entries, EntrySize bytes each (a short tail
// is ignored), checking that each re-packs to its bytes.
func unpackAll(t *testing.T, b []byte) []Entry {
	var out []Entry
	for ; len(b) >= EntrySize; b = b[EntrySize:] {
		p := packed(b[:EntrySize])
		e := p.entry()
		if p.id() != e.StatusID || pack(e) != p {
			t.Fatalf("packed %x reads as %+v, which packs as %x", p[:], e, pack(e))
		}
		out = append(out, e)
	}
	return out
}

// FuzzTimelineEntries drives a store with arbitrary entries, as pushes,
// merges and rebuilds from other nodes deliver them, by a script of
// operations, and checks it against a plain model after every step: each
// timeline holds the newest Capacity distinct non-zero ids, newest first,
// the first copy of an id kept; reads, lengths and byte counts agree.
// entries is read as packed entries (the store's own encoding, which must
// round-trip); script is one byte per operation: operation and owner, then
// a count of entries to take or an id to look for.
func FuzzTimelineEntries(f *testing.F) {
	packAll := func(es ...Entry) []byte {
		var b []byte
		for _, e := range es {
			p := pack(e)
			b = append(b, p[:]...)
		}
		return b
	}
	f.Add(uint8(3), packAll(e(5), e(1), e(9), e(5), e(0), e(7)), []byte{0x00, 2, 0x01, 3, 0x10, 1, 0x02, 9, 0x03, 5})
	f.Add(uint8(1), packAll(e(2), Entry{StatusID: 2, AuthorID: 99}, e(3)), []byte{0x05, 0x04, 3, 0x06, 0x00, 1, 0x07})
	f.Add(uint8(8), packAll(e(^uint64(0)), e(1<<63), e(1)), []byte{0x05, 0x08, 0x04, 3, 0x0b, 0x03, 0})
	f.Add(uint8(0), []byte{1, 2, 3}, []byte{})
	f.Fuzz(func(t *testing.T, capacity uint8, entries, script []byte) {
		all := unpackAll(t, entries)
		c := 1 + int(capacity)%16
		s := newTestStore(t, Options{Capacity: c, Shards: 2})
		m := newModel(c)
		next := 0
		take := func(n byte) []Entry {
			k := min(int(n), len(all)-next)
			es := all[next : next+k]
			next += k
			return es
		}
		arg := func(i *int) byte {
			if *i+1 < len(script) {
				*i++
				return script[*i]
			}
			return 0
		}
		for i := 0; i < len(script); i++ {
			op, owner := script[i]&7, uint64(script[i]>>3)&3
			switch op {
			case 0: // push
				batch := take(arg(&i))
				want := 0
				for _, x := range batch {
					if m.push(owner, x) {
						want++
					}
				}
				if got := s.Push(owner, batch...); got != want {
					t.Fatalf("Push(%d, %v) = %d, want %d", owner, statusIDs(batch), got, want)
				}
			case 1: // merge, as a rebuild or repair does
				batch := take(arg(&i))
				if got, want := s.Merge(owner, batch), m.merge(owner, batch); got != want {
					t.Fatalf("Merge(%d, %v) = %d, want %d", owner, statusIDs(batch), got, want)
				}
			case 2: // remove
				id := uint64(arg(&i))
				if len(all) > 0 {
					id = all[int(id)%len(all)].StatusID
				}
				_, held := m.held[owner]
				if got, want := s.Remove(owner, id), held && m.remove(owner, id); got != want {
					t.Fatalf("Remove(%d, %d) = %v, want %v", owner, id, got, want)
				}
			case 3: // range
				var maxID, sinceID uint64
				if len(all) > 0 {
					maxID = all[int(arg(&i))%len(all)].StatusID
					sinceID = all[int(arg(&i))%len(all)].StatusID
				}
				limit := int(arg(&i)) - 1
				if got, want := s.Range(owner, maxID, sinceID, limit), m.rangeDesc(owner, maxID, sinceID, limit); !slices.Equal(got, want) {
					t.Fatalf("Range(%d, %d, %d, %d) = %v, want %v", owner, maxID, sinceID, limit, statusIDs(got), statusIDs(want))
				}
			case 4: // replace
				batch := take(arg(&i))
				s.Replace(owner, batch)
				m.replace(owner, batch)
			case 5: // reserve
				s.Reserve(owner)
				m.reserve(owner)
			case 6: // fan-out push to several owners
				var x Entry
				if b := take(1); len(b) > 0 {
					x = b[0]
				}
				owners := []uint64{owner, (owner + 1) & 3, owner}
				want := 0
				var wantMissing []uint64
				for _, o := range owners {
					if m.push(o, x) {
						want++
					}
					if _, ok := m.held[o]; !ok && x.StatusID != 0 {
						wantMissing = append(wantMissing, o)
					}
				}
				got, missing := s.PushManyMissing(owners, x, nil)
				if got != want || !slices.Equal(missing, wantMissing) {
					t.Fatalf("PushManyMissing(%v, %d) = %d %v, want %d %v", owners, x.StatusID, got, missing, want, wantMissing)
				}
			case 7: // drop or unreserve
				if script[i]&0x20 != 0 {
					if got, want := s.Unreserve(owner), m.unreserve(owner); got != want {
						t.Fatalf("Unreserve(%d) = %v, want %v", owner, got, want)
					}
				} else if got, want := s.Drop(owner), m.drop(owner); got != want {
					t.Fatalf("Drop(%d) = %v, want %v", owner, got, want)
				}
			}
			want, held := m.view(owner)
			got, gotHeld := s.Get(owner)
			if s.Has(owner) != held || gotHeld != held || s.Len(owner) != len(want) || !slices.Equal(got, want) ||
				!slices.Equal(s.Range(owner, 0, 0, c), want) {
				t.Fatalf("after op %d: owner %d held=%v %v, want held=%v %v", op, owner, gotHeld, statusIDs(got), held, statusIDs(want))
			}
			checkBytes(t, s)
		}
		if s.Owners() != len(m.held) {
			t.Fatalf("Owners = %d, want %d", s.Owners(), len(m.held))
		}
	})
}
