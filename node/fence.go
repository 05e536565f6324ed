package node

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
)

// fence holds the fences of the map this node applied last (see
// gizzard.Map.Fence). Writes are admitted under its read lock, and a new map
// is installed under its write lock, so once install returns every write
// applied afterwards was routed by a map at least as new as every fence
// installed: what ExportShard snapshots after that is complete.
type fence struct {
	mu      sync.RWMutex
	version uint64
	fences  map[string]uint64
	// m is the map installed last; changed is closed when it is replaced.
	m       atomic.Pointer[gizzard.Map]
	changed chan struct{}
}

// install adopts the fences of m, once writes admitted by older fences
// have finished, and makes m the map this node routes with.
func (f *fence) install(m *gizzard.Map) {
	fs := maps.Clone(m.Fences)
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.Version > f.version {
		f.version, f.fences = m.Version, fs
		f.m.Store(m)
		close(f.changed)
		f.changed = make(chan struct{})
	}
}

// current returns the installed map (nil before the first) and a channel
// closed when a newer one is installed.
func (f *fence) current() (*gizzard.Map, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m.Load(), f.changed
}

func newFence() *fence { return &fence{changed: make(chan struct{})} }

// installed returns the version of the map whose fences are installed.
func (f *fence) installed() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.version
}

// admit lets writes routed by map version v apply to shards, until release
// is called, or refuses them with a *router.FencedError.
func (f *fence) admit(shards []string, v uint64) (release func(), err error) {
	f.mu.RLock()
	for _, sh := range shards {
		if fv := f.fences[sh]; v < fv {
			f.mu.RUnlock()
			return nil, &router.FencedError{Shard: sh, Stamp: v, Fence: fv}
		}
	}
	return f.mu.RUnlock, nil
}

// routedMap is the map this node routes with: the newest it has applied
// (its physical shards exist and its fences are installed). Before the
// first, the nameserver's.
func (n *Node) routedMap() *gizzard.Map {
	if m := n.fence.m.Load(); m != nil {
		return m
	}
	return n.ns.Map()
}

// waitMap returns the map this node routes with once it is at version v or
// newer.
func (n *Node) waitMap(ctx context.Context, v uint64) (*gizzard.Map, error) {
	for {
		m, changed := n.fence.current()
		if m != nil && m.Version >= v {
			return m, nil
		}
		select {
		case <-ctx.Done():
			have := uint64(0)
			if m != nil {
				have = m.Version
			}
			return nil, fmt.Errorf("waiting for map version %d (this node has applied %d): %w", v, have, ctx.Err())
		case <-changed:
		}
	}
}
