package node

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
)

// defaultShardName names the i-th default shard.
func defaultShardName(i int) string { return fmt.Sprintf("default-%03d", i) }

// placement puts requests that name no shard on one of the node's default
// shards, by a hash of the routing key: the content key, or the index owner.
// It stands in for the site's forwarding tables, which replace it once the
// node joins a sharded site.
type placement struct {
	shards []string
}

func (p placement) contentShard(key []byte) string {
	h := fnv.New64a()
	h.Write(key)
	return p.shards[h.Sum64()%uint64(len(p.shards))]
}

func (p placement) ownerShard(owner uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], owner)
	h := fnv.New64a()
	h.Write(b[:])
	return p.shards[h.Sum64()%uint64(len(p.shards))]
}
