package shard

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"strings"

	"github.com/aviarydb/aviary/ids"
)

// ContentSpan returns the [start, end) span of the shard-relative keys of a
// content table's records, for Digest, DigestData, ExportOptions and
// SplitSpan.
func ContentSpan(table string) (start, end []byte) {
	start = appendTable(nil, spaceContent, table)
	return start, prefixEnd(start)
}

// IndexSpan returns the [start, end) span of the shard-relative keys of an
// index table's entries. Entries are ordered by month, newest first, then
// owner, then id, newest first.
func IndexSpan(table string) (start, end []byte) {
	start = appendTable(nil, spaceIndex, table)
	return start, prefixEnd(start)
}

// splitPrecision is the most bytes after the common prefix of a span's
// bounds that SplitSpan interpolates over.
const splitPrecision = 7

// maxSplit bounds the number of sub-spans SplitSpan returns.
const maxSplit = 1 << 16

// SplitSpan splits the span [start, end) (nil end: unbounded) into at most n
// contiguous, non-empty sub-spans that cover it exactly: the first starts at
// start, each starts where the one before ends, the last ends at end.
// Boundaries are spaced evenly between the bounds over as few bytes after
// their common prefix as give n parts. So for a span whose keys share the
// prefix start (such as the spans of ContentSpan and IndexSpan), the
// sub-spans are bounded by the next byte after the prefix for up to 256
// parts, by the next two for up to 65536. Any sub-span can be split again.
// Keys need not be spread evenly: index keys begin with their month, so most
// of an index span's entries fall in few of its sub-spans; split those again
// to narrow a difference down. n is clamped to [1, 65536]; an empty span
// (end <= start) is returned whole.
func SplitSpan(start, end []byte, n int) [][2][]byte {
	n = min(max(n, 1), maxSplit)
	if n == 1 || (end != nil && bytes.Compare(start, end) >= 0) {
		return [][2][]byte{{start, end}}
	}
	// Keys between start and end share the bounds' common prefix p (none
	// if end is unbounded); interpolate over the w bytes after it, read as
	// big-endian integers, with the least w that gives n distinct points.
	l := 0
	if end != nil {
		for l < len(start) && l < len(end) && start[l] == end[l] {
			l++
		}
	}
	p := start[:l]
	var lo, hi uint64
	w := 1
	for ; ; w++ {
		lo = fraction(start[l:], w)
		if end != nil {
			hi = fraction(end[l:], w)
		} else {
			hi = 1 << (8 * w) // past the largest w bytes
		}
		if hi-lo >= uint64(n) || w == splitPrecision {
			break
		}
	}
	out := make([][2][]byte, 0, n)
	prev := start
	for i := 1; i < n; i++ {
		// lo + (hi-lo)*i/n without overflow.
		h, m := bits.Mul64(hi-lo, uint64(i))
		q, _ := bits.Div64(h, m, uint64(n))
		var f [8]byte
		binary.BigEndian.PutUint64(f[:], lo+q)
		b := append(bytes.Clone(p), bytes.TrimRight(f[8-w:], "\x00")...)
		// Only with bounds alike to 7 bytes past their common prefix can
		// boundaries repeat or fail to pass start.
		if bytes.Compare(b, prev) <= 0 || (end != nil && bytes.Compare(b, end) >= 0) {
			continue
		}
		out = append(out, [2][]byte{prev, b})
		prev = b
	}
	return append(out, [2][]byte{prev, end})
}

// fraction reads the first w bytes of b, padded with zeros, as a big-endian
// integer.
func fraction(b []byte, w int) uint64 {
	var f [8]byte
	copy(f[8-w:], b)
	return binary.BigEndian.Uint64(f[:])
}

// FormatKey renders a shard-relative key (a key without the shard number,
// as Export, Digest and the span helpers use) for people:
//
//	content posts "abc"
//	index timeline owner=42 id=123 month=2026-05
//	count timeline owner=42 month=2026-05
//	month timeline 2026-05
//	retention timeline
//
// A prefix of an index key (a span bound) shows the parts it has. Anything
// it cannot decode is shown in hex, as "hex:" and the digits; it never
// panics.
func FormatKey(k []byte) string {
	if len(k) == 0 {
		return `""`
	}
	raw := "hex:" + hex.EncodeToString(k)
	if len(k) < 2 {
		return raw
	}
	space, tl := k[0], int(k[1])
	rest := k[2:]
	if len(rest) < tl {
		return raw
	}
	table := string(rest[:tl])
	rest = rest[tl:]
	if validName("table", table) != nil {
		return raw
	}
	var sb strings.Builder
	switch space {
	case spaceContent:
		return fmt.Sprintf("content %s %q", table, rest)
	case spaceIndex:
		// ^month owner ^id, possibly a prefix of it.
		if len(rest) != 0 && len(rest) != 4 && len(rest) != 12 && len(rest) != 20 {
			return raw
		}
		sb.WriteString("index ")
		sb.WriteString(table)
		if len(rest) >= 12 {
			fmt.Fprintf(&sb, " owner=%d", binary.BigEndian.Uint64(rest[4:]))
		}
		if len(rest) == 20 {
			fmt.Fprintf(&sb, " id=%d", ^binary.BigEndian.Uint64(rest[12:]))
		}
		if len(rest) >= 4 {
			fmt.Fprintf(&sb, " month=%s", ids.MonthString(^binary.BigEndian.Uint32(rest)))
		}
		return sb.String()
	case spaceCount:
		if len(rest) != 12 {
			return raw
		}
		return fmt.Sprintf("count %s owner=%d month=%s", table, binary.BigEndian.Uint64(rest[4:]), ids.MonthString(^binary.BigEndian.Uint32(rest)))
	case spaceMonth:
		if len(rest) != 4 {
			return raw
		}
		return fmt.Sprintf("month %s %s", table, ids.MonthString(^binary.BigEndian.Uint32(rest)))
	case spaceRetention:
		if len(rest) != 0 {
			return raw
		}
		return "retention " + table
	}
	return raw
}
