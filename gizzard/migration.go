package gizzard

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// MigrationKind says what a migration does.
type MigrationKind string

// Migration kinds.
const (
	// MigrateMove copies a physical shard to another node and replaces it
	// there: the new copy joins the same replicating parent.
	MigrateMove MigrationKind = "move"
	// MigrateSplit copies the upper part [SplitAt, end) of a tree's hash
	// range into a new physical shard under a new root, and points that
	// part's forwardings at it.
	MigrateSplit MigrationKind = "split"
)

// MigrationState is the step a migration has reached. Every state change
// is one change of the map, so a migration resumes where it stopped.
//
//	planned   recorded; the map is unchanged
//	copying   Dest exists behind a write_only wrapper under Root and gets
//	          every new write; the copy of older data is under way
//	copied    the copy finished
//	verified  source and destination digests matched (or --force)
//	cutover   move: Dest serves reads, Source only gets writes (behind a
//	          write_only wrapper); split: the new root serves its range
//	cleanup   the source's copy is out of the map; its data is being dropped
//	done      finished
//	cancelled rolled back; the original layout serves everything
type MigrationState string

// Migration states, in order.
const (
	MigrationPlanned   MigrationState = "planned"
	MigrationCopying   MigrationState = "copying"
	MigrationCopied    MigrationState = "copied"
	MigrationVerified  MigrationState = "verified"
	MigrationCutover   MigrationState = "cutover"
	MigrationCleanup   MigrationState = "cleanup"
	MigrationDone      MigrationState = "done"
	MigrationCancelled MigrationState = "cancelled"
)

// Final reports whether s ends a migration.
func (s MigrationState) Final() bool { return s == MigrationDone || s == MigrationCancelled }

func (s MigrationState) valid() bool {
	switch s {
	case MigrationPlanned, MigrationCopying, MigrationCopied, MigrationVerified,
		MigrationCutover, MigrationCleanup, MigrationDone, MigrationCancelled:
		return true
	}
	return false
}

// Migration is an online move or split of a shard, recorded in the map so
// that every step survives the crash of whoever drives it. The copy's
// cursor is kept by the destination node, in the same batches as the data
// it covers.
type Migration struct {
	ID   string        `json:"id"`
	Kind MigrationKind `json:"kind"`
	// Root is the replicating parent of Source (move), or the root of the
	// tree being split.
	Root string `json:"root"`
	// Source is the physical shard copied from, on SourceNode.
	Source     string `json:"source"`
	SourceNode string `json:"source_node"`
	// Dest is the new physical shard, on DestNode; Wrapper is the
	// write_only shard that hides it from reads until cutover.
	Dest     string `json:"dest"`
	DestNode string `json:"dest_node"`
	Wrapper  string `json:"wrapper"`
	// SourceWrapper (move) is the write_only shard that keeps Source
	// written but unread between cutover and cleanup.
	SourceWrapper string `json:"source_wrapper,omitempty"`
	// NewRoot and SplitAt (split): the new tree's root and the hash at
	// which its range starts.
	NewRoot string         `json:"new_root,omitempty"`
	SplitAt uint64         `json:"split_at,omitempty"`
	State   MigrationState `json:"state"`
	// Paused asks the driver to stop copying until it is cleared.
	Paused bool `json:"paused,omitempty"`
	// Force lets cutover proceed despite a failed verification.
	Force bool `json:"force,omitempty"`
	// Rate is the copy throttle as given (e.g. "20MB/s", "5000rec/s", "0"
	// for none).
	Rate string `json:"rate,omitempty"`
	// Created and Updated are the At of the changes that created and last
	// changed the record; Who created it.
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Who     string    `json:"who,omitempty"`
	// Note says what the last step found (a verification result, why it
	// was cancelled).
	Note string `json:"note,omitempty"`
}

// maxFinishedMigrations bounds the finished migrations a map keeps.
const maxFinishedMigrations = 100

func validMigration(g Migration) error {
	if err := ValidName(g.ID); err != nil {
		return fmt.Errorf("migration id: %w", err)
	}
	if g.Kind != MigrateMove && g.Kind != MigrateSplit {
		return fmt.Errorf("migration %q: kind %q is neither %q nor %q", g.ID, g.Kind, MigrateMove, MigrateSplit)
	}
	if !g.State.valid() {
		return fmt.Errorf("migration %q: unknown state %q", g.ID, g.State)
	}
	for _, f := range []struct{ what, v string }{{"root", g.Root}, {"source", g.Source}, {"source_node", g.SourceNode}, {"dest", g.Dest}, {"dest_node", g.DestNode}, {"wrapper", g.Wrapper}} {
		if err := ValidName(f.v); err != nil {
			return fmt.Errorf("migration %q: %s: %w", g.ID, f.what, err)
		}
	}
	for _, f := range []struct{ what, v string }{{"source_wrapper", g.SourceWrapper}, {"new_root", g.NewRoot}} {
		if f.v == "" {
			continue
		}
		if err := ValidName(f.v); err != nil {
			return fmt.Errorf("migration %q: %s: %w", g.ID, f.what, err)
		}
	}
	if g.Kind == MigrateSplit && g.NewRoot == "" {
		return fmt.Errorf("migration %q: a split names its new root", g.ID)
	}
	for _, t := range []time.Time{g.Created, g.Updated} {
		if err := validTime(t); err != nil {
			return fmt.Errorf("migration %q: %w", g.ID, err)
		}
	}
	for _, f := range []struct{ what, v string }{{"who", g.Who}, {"note", g.Note}, {"rate", g.Rate}} {
		if err := validText(f.what, f.v); err != nil {
			return fmt.Errorf("migration %q: %w", g.ID, err)
		}
	}
	return nil
}

// setMigration creates or updates g. expect is the state the migration
// must be in now: empty means it must not exist yet.
func (a *applier) setMigration(g *Migration, expect MigrationState, at time.Time) error {
	if g == nil {
		return fmt.Errorf("set_migration needs a migration")
	}
	cur, exists := a.m.Migrations[g.ID]
	switch {
	case expect == "" && exists:
		return fmt.Errorf("migration %q exists already (state %s)", g.ID, cur.State)
	case expect != "" && !exists:
		return fmt.Errorf("migration %q does not exist", g.ID)
	case expect != "" && cur.State != expect:
		return fmt.Errorf("%w: migration %q is %s, not %s", ErrStateMoved, g.ID, cur.State, expect)
	}
	n := *g
	if !exists {
		n.Created = at
	} else {
		n.Created = cur.Created
		if n.State != cur.State {
			// A driver's step: it may carry a copy of the record read
			// before an operator paused, forced or throttled it. Those
			// are the operator's to change, in an update that keeps the
			// state.
			n.Paused, n.Force, n.Rate = cur.Paused, cur.Force, cur.Rate
		}
	}
	n.Updated = at
	if err := validMigration(n); err != nil {
		return err
	}
	if !exists && !n.State.Final() {
		for _, o := range a.m.Migrations {
			if o.State.Final() {
				continue
			}
			for _, busy := range []string{o.Source, o.Root} {
				if busy == n.Source || busy == n.Root {
					return fmt.Errorf("%q is already in migration %q (%s, %s)", busy, o.ID, o.Kind, o.State)
				}
			}
		}
	}
	if a.m.Migrations == nil {
		a.m.Migrations = map[string]Migration{}
	}
	a.m.Migrations[n.ID] = n
	a.trimMigrations()
	return nil
}

// trimMigrations drops the oldest finished migrations beyond the bound.
func (a *applier) trimMigrations() {
	var done []Migration
	for _, g := range a.m.Migrations {
		if g.State.Final() {
			done = append(done, g)
		}
	}
	if len(done) <= maxFinishedMigrations {
		return
	}
	slices.SortFunc(done, func(x, y Migration) int {
		return cmp.Or(x.Updated.Compare(y.Updated), cmp.Compare(x.ID, y.ID))
	})
	for _, g := range done[:len(done)-maxFinishedMigrations] {
		delete(a.m.Migrations, g.ID)
	}
}

func (a *applier) removeMigration(id string) error {
	if _, ok := a.m.Migrations[id]; !ok {
		return fmt.Errorf("migration %q does not exist", id)
	}
	delete(a.m.Migrations, id)
	return nil
}

// ActiveMigrations returns the migrations not finished, by id.
func (m *Map) ActiveMigrations() []Migration {
	var out []Migration
	for _, id := range sortedKeys(m.Migrations) {
		if g := m.Migrations[id]; !g.State.Final() {
			out = append(out, g)
		}
	}
	return out
}

// Syncing reports whether writes to the tree rooted at root must reach
// every replica before they are acknowledged, whatever the consistency
// asked for: while a migration of the tree is verified or cut over, so that
// the replica that serves reads next holds every acknowledged write.
func (m *Map) Syncing(root string) bool {
	for _, g := range m.Migrations {
		if (g.State == MigrationVerified || g.State == MigrationCutover) && m.TreeRoot(g.Root) == root {
			return true
		}
	}
	return false
}

// TreeRoot returns the root of the tree that holds shard id: id itself
// when no link points to it.
func (m *Map) TreeRoot(id string) string {
	for range len(m.Shards) + 1 { // bounded, even if the map had a cycle
		p := m.Parent(id)
		if p == "" {
			return id
		}
		id = p
	}
	return id
}

// Fencing. A router stamps every write with the map version it routed it
// by. A physical shard's fence is the version of the last change that
// changed where the writes of its range go: the set of leaves written
// together with it, or the forwardings that lead to it (or that removed
// it). A node refuses a write stamped older than the fence of its shard,
// and the router routes it again by a newer map. So once a change is
// applied on a shard's node, no write routed by an older map lands there:
// what a migration copies from a source after that is complete, and a
// retired copy takes no write.

// Fence returns the fence of physical shard id: 0 when none is recorded.
func (m *Map) Fence(id string) uint64 { return m.Fences[id] }

// writeSignatures returns, for every physical shard reachable from a
// forwarding, a description of where writes reaching it go: its tree's
// write targets and the forwardings into that tree.
func (m *Map) writeSignatures() map[string]string {
	byRoot := map[string][]string{}
	for _, t := range sortedKeys(m.Forwardings) {
		fs := m.Forwardings[t]
		for i, f := range fs {
			end := "end"
			if i+1 < len(fs) {
				end = hex64(fs[i+1].Base)
			}
			byRoot[f.Root] = append(byRoot[f.Root], fmt.Sprintf("%s[%s,%s)", t, hex64(f.Base), end))
		}
	}
	sigs := map[string]string{}
	for _, root := range sortedKeys(byRoot) {
		p, err := m.PlanWrite(root)
		if err != nil {
			continue
		}
		var b strings.Builder
		b.WriteString(strings.Join(byRoot[root], " "))
		for _, l := range p.Targets {
			b.WriteString(" ")
			b.WriteString(l.Node)
			b.WriteString("/")
			b.WriteString(l.Shard)
		}
		for _, r := range p.Rejected {
			b.WriteString(" !")
			b.WriteString(r.Shard)
		}
		if p.Dropped {
			b.WriteString(" dropped")
		}
		if m.Syncing(root) {
			b.WriteString(" sync")
		}
		s := b.String()
		for _, l := range p.Targets {
			sigs[l.Shard] = s
		}
	}
	return sigs
}

// updateFences sets the fence of every physical shard whose write
// signature differs between before and after to after's version.
func updateFences(before, after *Map) {
	was, now := before.writeSignatures(), after.writeSignatures()
	for id, s := range was {
		if now[id] != s {
			after.setFence(id)
		}
	}
	for id, s := range now {
		if was[id] != s {
			after.setFence(id)
		}
	}
}

func (m *Map) setFence(id string) {
	if m.Fences == nil {
		m.Fences = map[string]uint64{}
	}
	m.Fences[id] = m.Version
}
