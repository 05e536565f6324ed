package shard

import (
	"encoding/binary"
	"fmt"
)

// Spaces within a shard's key span. See the package comment.
const (
	spaceContent   byte = 'c'
	spaceIndex     byte = 'i'
	spaceCount     byte = 'n'
	spaceMonth     byte = 'm'
	spaceRetention byte = 'r'

	metaShard byte = 'S'
	metaTable byte = 'T'
)

// shardPrefixLen is the length of the local shard number that starts a key.
const shardPrefixLen = 4

func appendShard(dst []byte, num uint32) []byte {
	return binary.BigEndian.AppendUint32(dst, num)
}

func appendTable(dst []byte, space byte, table string) []byte {
	dst = append(dst, space, byte(len(table)))
	return append(dst, table...)
}

// contentKey encodes shard 'c' table key.
func contentKey(num uint32, table string, key []byte) []byte {
	k := make([]byte, 0, shardPrefixLen+2+len(table)+len(key))
	k = appendShard(k, num)
	k = appendTable(k, spaceContent, table)
	return append(k, key...)
}

// indexMonthPrefix encodes shard 'i' table ^month.
func indexMonthPrefix(num uint32, table string, month uint32) []byte {
	k := make([]byte, 0, shardPrefixLen+2+len(table)+4+8+8)
	k = appendShard(k, num)
	k = appendTable(k, spaceIndex, table)
	return binary.BigEndian.AppendUint32(k, ^month)
}

// indexOwnerPrefix encodes shard 'i' table ^month owner.
func indexOwnerPrefix(num uint32, table string, month uint32, owner uint64) []byte {
	return binary.BigEndian.AppendUint64(indexMonthPrefix(num, table, month), owner)
}

// indexKey encodes shard 'i' table ^month owner ^id.
func indexKey(num uint32, table string, month uint32, owner, id uint64) []byte {
	return binary.BigEndian.AppendUint64(indexOwnerPrefix(num, table, month, owner), ^id)
}

// countMonthPrefix encodes shard 'n' table ^month.
func countMonthPrefix(num uint32, table string, month uint32) []byte {
	k := make([]byte, 0, shardPrefixLen+2+len(table)+4+8)
	k = appendShard(k, num)
	k = appendTable(k, spaceCount, table)
	return binary.BigEndian.AppendUint32(k, ^month)
}

// countKey encodes shard 'n' table ^month owner.
func countKey(num uint32, table string, month uint32, owner uint64) []byte {
	return binary.BigEndian.AppendUint64(countMonthPrefix(num, table, month), owner)
}

// monthKey encodes shard 'm' table ^month.
func monthKey(num uint32, table string, month uint32) []byte {
	return binary.BigEndian.AppendUint32(tablePrefix(num, spaceMonth, table), ^month)
}

// retentionKey encodes shard 'r' table.
func retentionKey(num uint32, table string) []byte {
	return tablePrefix(num, spaceRetention, table)
}

func tablePrefix(num uint32, space byte, table string) []byte {
	k := make([]byte, 0, shardPrefixLen+2+len(table)+4)
	return appendTable(appendShard(k, num), space, table)
}

func metaKey(kind byte, name string) []byte {
	k := make([]byte, 0, shardPrefixLen+1+len(name))
	k = appendShard(k, 0)
	k = append(k, kind)
	return append(k, name...)
}

// shardSpan returns the [start, end) span of every key of shard num.
func shardSpan(num uint32) (start, end []byte) {
	return appendShard(nil, num), appendShard(nil, num+1)
}

// prefixEnd returns the smallest key greater than every key with prefix p,
// or nil if there is none.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// decodedKey is a key split into its parts. Fields not in the key's space
// are zero.
type decodedKey struct {
	shard uint32
	space byte
	table string
	key   []byte // content key (aliases the input)
	month uint32
	owner uint64
	id    uint64
}

// decodeKey splits a data key (not metadata) into its parts.
func decodeKey(k []byte) (decodedKey, error) {
	var d decodedKey
	if len(k) < shardPrefixLen+2 {
		return d, fmt.Errorf("shard: key too short (%d bytes)", len(k))
	}
	d.shard = binary.BigEndian.Uint32(k)
	d.space = k[shardPrefixLen]
	tl := int(k[shardPrefixLen+1])
	rest := k[shardPrefixLen+2:]
	if len(rest) < tl {
		return d, fmt.Errorf("shard: key table name truncated")
	}
	d.table, rest = string(rest[:tl]), rest[tl:]
	need := 0
	switch d.space {
	case spaceContent:
		d.key = rest
		return d, nil
	case spaceIndex:
		need = 20
	case spaceCount:
		need = 12
	case spaceMonth:
		need = 4
	case spaceRetention:
		need = 0
	default:
		return d, fmt.Errorf("shard: key has unknown space %q", d.space)
	}
	if len(rest) != need {
		return d, fmt.Errorf("shard: key of space %q has %d trailing bytes, want %d", d.space, len(rest), need)
	}
	if need >= 4 {
		d.month = ^binary.BigEndian.Uint32(rest)
	}
	if need >= 12 {
		d.owner = binary.BigEndian.Uint64(rest[4:])
	}
	if need >= 20 {
		d.id = ^binary.BigEndian.Uint64(rest[12:])
	}
	return d, nil
}
