package timeline

import (
	"cmp"
	"math"
	"slices"
)

// minBuf is the number of slots a timeline's buffer gets when it first
// needs room.
const minBuf = 8

// list is one timeline: at most capacity entries (the Store's, passed in
// by the caller) with distinct, non-zero status ids, in a ring buffer of
// packed entries sorted by ascending id. Logical index 0 is the oldest
// entry and n-1 the newest; logical i lives at buf[(head+i) mod len(buf)].
//
// The ring makes the common cases O(1): a new newest entry goes after the
// newest, and a full list drops its oldest by advancing head. An entry
// that arrives out of order is inserted by moving the shorter side of the
// ring by one slot. The buffer doubles, up to capacity, when it is full; it
// never shrinks.
//
// A list is not safe for concurrent use; its Store's shard locks guard it.
type list struct {
	buf  []packed
	head int // physical index of logical 0; 0 <= head < len(buf), or 0
	n    int // number of entries; n <= len(buf)
	// pending marks a timeline reserved by Store.Reserve and not yet
	// installed: it takes pushes but readers see it as not held.
	pending bool
}

// phys returns the physical index of logical index i, for 0 <= i <
// len(buf): i may be n when there is room for one more.
func (l *list) phys(i int) int {
	p := l.head + i
	if p >= len(l.buf) {
		p -= len(l.buf)
	}
	return p
}

func (l *list) at(i int) *packed { return &l.buf[l.phys(i)] }

// search returns the smallest logical index whose id is at least id, or n.
func (l *list) search(id uint64) int {
	lo, hi := 0, l.n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if l.at(m).id() < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// insert adds e unless its id is 0, is already held, or is older than the
// oldest entry of a list that holds capacity entries. A full list drops its
// oldest entry to make room. insert reports whether e was added.
func (l *list) insert(e Entry, capacity int) bool {
	id := e.StatusID
	if id == 0 {
		return false
	}
	var i int
	if l.n == 0 || id > l.at(l.n-1).id() {
		i = l.n // the common case: a new newest entry
	} else {
		i = l.search(id)
		if l.at(i).id() == id {
			return false
		}
	}
	switch {
	case l.n >= capacity:
		if i == 0 {
			return false
		}
		l.head = l.phys(1)
		l.n--
		i--
	case l.n == len(l.buf):
		l.grow(capacity)
	}
	// There is room for one more: move the shorter side by one slot.
	if i >= l.n-i {
		for j := l.n; j > i; j-- {
			*l.at(j) = *l.at(j - 1)
		}
	} else {
		l.head--
		if l.head < 0 {
			l.head += len(l.buf)
		}
		for j := 0; j < i; j++ {
			*l.at(j) = *l.at(j + 1)
		}
	}
	*l.at(i) = pack(e)
	l.n++
	return true
}

// grow replaces a full buffer with one twice its size (at least minBuf, at
// most capacity), linearised so that head is 0.
func (l *list) grow(capacity int) {
	c := min(max(2*len(l.buf), minBuf), capacity)
	nb := make([]packed, c)
	k := copy(nb, l.buf[l.head:min(l.head+l.n, len(l.buf))])
	copy(nb[k:], l.buf[:l.n-k])
	l.buf, l.head = nb, 0
}

// remove deletes the entry with the given id, moving the shorter side of
// the ring into its slot, and reports whether it was there.
func (l *list) remove(id uint64) bool {
	i := l.search(id)
	if i == l.n || l.at(i).id() != id {
		return false
	}
	if i < l.n/2 {
		for j := i; j > 0; j-- {
			*l.at(j) = *l.at(j - 1)
		}
		l.head = l.phys(1)
	} else {
		for j := i; j < l.n-1; j++ {
			*l.at(j) = *l.at(j + 1)
		}
	}
	l.n--
	return true
}

// span returns the logical range [lo, hi) of the newest limit (>= 1)
// entries with sinceID < id <= maxID, where 0 leaves a bound open. The
// open bounds, a maxID at or above the newest entry and a sinceID below the
// oldest of the page cost no search.
func (l *list) span(maxID, sinceID uint64, limit int) (lo, hi int) {
	if l.n == 0 {
		return 0, 0
	}
	hi = l.n
	if maxID != 0 && maxID < l.at(hi-1).id() {
		hi = l.search(maxID + 1) // maxID+1 does not overflow
	}
	lo = max(hi-limit, 0)
	if lo < hi && sinceID != 0 && l.at(lo).id() <= sinceID {
		if sinceID == math.MaxUint64 {
			return hi, hi
		}
		lo = min(l.search(sinceID+1), hi)
	}
	return lo, hi
}

// appendRange appends the entries of logical range [lo, hi) to dst, newest
// first.
func (l *list) appendRange(dst []Entry, lo, hi int) []Entry {
	for i := hi - 1; i >= lo; i-- {
		dst = append(dst, l.at(i).entry())
	}
	return dst
}

// merge adds ps, which must be sorted by ascending id with distinct
// non-zero ids (as sortedEntries returns them), and keeps the newest
// capacity entries of the union; of equal ids the list's entry is kept.
// The result is what inserting the entries of ps one by one would leave,
// in O(n + len(ps)) rather than up to O(n) moves per entry. merge returns
// the number of entries of ps that the list holds afterwards and did not
// before.
//
// The union is written from the newest down. When it fits in the buffer
// it is written in place, with head advanced past the old entries that do
// not survive, so a write never lands on an old entry still to be read
// (the dropped ones are not read again: their slots may be written);
// otherwise the buffer is replaced by one of at least twice its size (at
// least minBuf, at most capacity) that fits it.
func (l *list) merge(ps []packed, capacity int) (added int) {
	// Count the union's size m and how many of it come from each side.
	m, kept := 0, 0 // kept counts the list's own entries of the union
	for i, j := l.n-1, len(ps)-1; m < capacity && (i >= 0 || j >= 0); m++ {
		switch {
		case j < 0 || (i >= 0 && l.at(i).id() > ps[j].id()):
			i--
			kept++
		case i < 0 || l.at(i).id() < ps[j].id():
			j--
			added++
		default: // equal ids: the list's entry is kept
			i--
			j--
			kept++
		}
	}
	if added == 0 {
		return 0 // the union's newest capacity are the list's entries
	}
	lo := l.n - kept // the list's entries below lo are dropped
	dst, head := l.buf, l.phys(lo)
	if m > len(l.buf) {
		dst, head = make([]packed, max(m, min(max(2*len(l.buf), minBuf), capacity))), 0
	}
	i, j := l.n-1, len(ps)-1
	for w := m - 1; w >= 0; w-- {
		var p packed
		switch {
		case j < 0 || (i >= lo && l.at(i).id() > ps[j].id()):
			p = *l.at(i)
			i--
		case i < lo || l.at(i).id() < ps[j].id():
			p = ps[j]
			j--
		default:
			p = *l.at(i)
			i--
			j--
		}
		k := head + w
		if k >= len(dst) {
			k -= len(dst)
		}
		dst[k] = p
	}
	l.buf, l.head, l.n = dst, head, m
	return added
}

// sortedEntries returns the newest capacity entries of es with distinct
// non-zero ids, packed and sorted by ascending id; of entries with equal
// ids it keeps the first. es is not modified. The result starts at the
// start of its array, which is exactly as long as the result if nothing
// was dropped.
func sortedEntries(es []Entry, capacity int) []packed {
	ps := make([]packed, 0, len(es))
	for _, e := range es {
		if e.StatusID != 0 {
			ps = append(ps, pack(e))
		}
	}
	// Stable, so that the first of equal ids stays first and is kept.
	slices.SortStableFunc(ps, func(a, b packed) int { return cmp.Compare(a.id(), b.id()) })
	ps = slices.CompactFunc(ps, func(a, b packed) bool { return a.id() == b.id() })
	if len(ps) > capacity {
		ps = ps[:copy(ps, ps[len(ps)-capacity:])]
	}
	return ps
}

// all returns the entries newest first, nil if there are none.
func (l *list) all() []Entry {
	if l.n == 0 {
		return nil
	}
	return l.appendRange(make([]Entry, 0, l.n), 0, l.n)
}

// newList returns a list holding ps, as sortedEntries returns it. The
// buffer is exactly as long as the list: ps's array if it is, else a copy.
func newList(ps []packed) *list {
	l := &list{n: len(ps)}
	switch {
	case len(ps) == cap(ps):
		l.buf = ps
	case len(ps) > 0:
		l.buf = make([]packed, len(ps))
		copy(l.buf, ps)
	}
	return l
}
