package shard

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/aviarydb/aviary/ids"
)

// Version orders the writes of one key across sites: last writer wins on
// (HLC, Site).
type Version struct {
	HLC  ids.Timestamp
	Site uint32
}

// Compare returns -1, 0 or +1 as v is older than, equal to or newer than w.
func (v Version) Compare(w Version) int {
	switch {
	case v.HLC < w.HLC:
		return -1
	case v.HLC > w.HLC:
		return 1
	case v.Site < w.Site:
		return -1
	case v.Site > w.Site:
		return 1
	}
	return 0
}

// IsZero reports whether v is the zero version, which no write may carry.
func (v Version) IsZero() bool { return v.HLC == 0 && v.Site == 0 }

func (v Version) String() string { return fmt.Sprintf("%s@%d", v.HLC, v.Site) }

const (
	recordHeaderLen = 13
	flagTombstone   = 1
)

// record is a decoded content or index-entry value.
type record struct {
	version   Version
	tombstone bool
	value     []byte // aliases the encoded bytes
}

func encodeRecord(v Version, tombstone bool, value []byte) []byte {
	b := make([]byte, recordHeaderLen, recordHeaderLen+len(value))
	binary.BigEndian.PutUint64(b, uint64(v.HLC))
	binary.BigEndian.PutUint32(b[8:], v.Site)
	if tombstone {
		b[12] = flagTombstone
	}
	return append(b, value...)
}

func decodeRecord(b []byte) (record, error) {
	if len(b) < recordHeaderLen {
		return record{}, fmt.Errorf("shard: record too short (%d bytes)", len(b))
	}
	if b[12]&^flagTombstone != 0 {
		return record{}, fmt.Errorf("shard: record has unknown flags %#x", b[12])
	}
	return record{
		version:   Version{HLC: ids.Timestamp(binary.BigEndian.Uint64(b)), Site: binary.BigEndian.Uint32(b[8:])},
		tombstone: b[12]&flagTombstone != 0,
		value:     b[recordHeaderLen:],
	}, nil
}

// wins reports whether a record (v, tomb, val) replaces cur. Versions decide;
// equal versions (which distinct writes never share) fall back to comparing
// the encoded record, so the outcome never depends on the order of arrival.
func wins(v Version, enc []byte, cur record, curEnc []byte) bool {
	switch v.Compare(cur.version) {
	case 1:
		return true
	case -1:
		return false
	}
	return bytes.Compare(enc, curEnc) > 0
}
