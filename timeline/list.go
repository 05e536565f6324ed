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

// newList returns a list holding the newest capacity entries of es with
// distinct non-zero ids; of entries with equal ids it keeps the first. es
// is not modified. The buffer is exactly as long as the list.
func newList(es []Entry, capacity int) *list {
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
		ps = ps[len(ps)-capacity:]
	}
	l := &list{n: len(ps)}
	switch {
	case len(ps) == len(es):
		l.buf = ps // nothing was dropped: ps is its whole array
	case len(ps) > 0:
		l.buf = make([]packed, len(ps))
		copy(l.buf, ps)
	}
	return l
}
