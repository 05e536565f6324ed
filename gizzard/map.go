package gizzard

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Kind is the kind of a shard-tree node.
type Kind string

// Kinds of shard-tree nodes, with Gizzard's semantics (see the package
// documentation for each kind's read and write behaviour).
const (
	// KindPhysical is a leaf: a physical shard held by one node.
	KindPhysical Kind = "physical"
	// KindReplicating has one or more children: writes go to every child,
	// reads to one chosen by weight, failing over to the others.
	KindReplicating Kind = "replicating"
	// KindReadOnly has exactly one child and refuses writes.
	KindReadOnly Kind = "read_only"
	// KindWriteOnly has exactly one child and refuses reads.
	KindWriteOnly Kind = "write_only"
	// KindBlocked has exactly one child and refuses reads and writes.
	KindBlocked Kind = "blocked"
	// KindBlackHole has exactly one child; reads find nothing and writes
	// are accepted and dropped.
	KindBlackHole Kind = "black_hole"
)

// valid reports whether k is one of the defined kinds.
func (k Kind) valid() bool {
	switch k {
	case KindPhysical, KindReplicating, KindReadOnly, KindWriteOnly, KindBlocked, KindBlackHole:
		return true
	}
	return false
}

// IsWrapper reports whether k is a wrapper kind: a logical shard with
// exactly one child (read_only, write_only, blocked, black_hole).
func (k Kind) IsWrapper() bool {
	switch k {
	case KindReadOnly, KindWriteOnly, KindBlocked, KindBlackHole:
		return true
	}
	return false
}

// Node is a storage node of the site.
type Node struct {
	ID       string `json:"id"`
	GRPCAddr string `json:"grpc_addr"`
	RaftAddr string `json:"raft_addr"`
	// Timeline says the node holds home timelines: it is on the site's
	// timeline rings.
	Timeline bool `json:"timeline,omitempty"`
}

// Link is a parent's edge to one child. Weight (at least 1) is the child's
// read preference within a Replicating parent; other kinds ignore it.
type Link struct {
	Child  string `json:"child"`
	Weight int    `json:"weight"`
}

// Shard is a node of a shard tree. A physical shard names the node holding
// it and has no children; its ID is also its name on that node. A logical
// shard has no node and one or more children.
type Shard struct {
	ID       string `json:"id"`
	Kind     Kind   `json:"kind"`
	Node     string `json:"node,omitempty"`
	Children []Link `json:"children,omitempty"`
}

// TableKind says whether a table holds content or an index.
type TableKind string

// Table kinds.
const (
	TableContent TableKind = "content"
	TableIndex   TableKind = "index"
)

// Table is a table of the site; each has its own forwardings.
type Table struct {
	Name string    `json:"name"`
	Kind TableKind `json:"kind"`
}

// Forwarding maps the hashes of Table from Base up to the next forwarding's
// base to the shard tree rooted at Root. A key's hash h goes to the
// forwarding of its table with the greatest Base <= h.
type Forwarding struct {
	Table string `json:"table"`
	Base  uint64 `json:"base"`
	Root  string `json:"root"`
}

// AuditEntry records one applied Change.
type AuditEntry struct {
	Version uint64    `json:"version"` // the map's version after the change
	At      time.Time `json:"at"`      // the change's At, in UTC
	Who     string    `json:"who"`
	From    string    `json:"from"`
	What    string    `json:"what"` // the steps, each by Step.String, joined by "; "
}

// Map is a site's shard map. It is changed only by Apply, which keeps every
// invariant Validate checks; it round-trips exactly through encoding/json.
// A Map is not safe for concurrent mutation; treat a published Map as
// immutable and apply changes to a Clone.
type Map struct {
	// Version counts applied changes.
	Version uint64 `json:"version"`
	// Nodes by id.
	Nodes map[string]Node `json:"nodes"`
	// Tables by name.
	Tables map[string]Table `json:"tables"`
	// Shards (physical and logical) by id.
	Shards map[string]Shard `json:"shards"`
	// Forwardings per table, sorted by Base ascending, bases unique.
	Forwardings map[string][]Forwarding `json:"forwardings"`
	// Audit holds one entry per applied change, oldest first.
	Audit []AuditEntry `json:"audit"`
	// Fences holds, per physical shard, the version of the last change
	// that changed where its writes go (see Fence).
	Fences map[string]uint64 `json:"fences,omitempty"`
	// Migrations holds the online migrations, active and recently
	// finished, by id.
	Migrations map[string]Migration `json:"migrations,omitempty"`
	// Sites lists every site of the deployment, this one included, by name.
	Sites map[string]Site `json:"sites,omitempty"`
}

// NewMap returns an empty map at version 0.
func NewMap() *Map {
	m := &Map{Audit: []AuditEntry{}}
	m.ensureMaps()
	return m
}

// ensureMaps replaces nil maps by empty ones.
func (m *Map) ensureMaps() {
	if m.Nodes == nil {
		m.Nodes = map[string]Node{}
	}
	if m.Tables == nil {
		m.Tables = map[string]Table{}
	}
	if m.Shards == nil {
		m.Shards = map[string]Shard{}
	}
	if m.Forwardings == nil {
		m.Forwardings = map[string][]Forwarding{}
	}
}

// Clone returns a deep copy of m; nil and empty fields stay nil and empty.
func (m *Map) Clone() *Map {
	c := &Map{
		Version:     m.Version,
		Nodes:       maps.Clone(m.Nodes),
		Tables:      maps.Clone(m.Tables),
		Shards:      maps.Clone(m.Shards),
		Forwardings: maps.Clone(m.Forwardings),
		Audit:       slices.Clone(m.Audit),
		Fences:      maps.Clone(m.Fences),
		Migrations:  maps.Clone(m.Migrations),
		Sites:       maps.Clone(m.Sites),
	}
	for id, s := range c.Shards {
		s.Children = slices.Clone(s.Children)
		c.Shards[id] = s
	}
	for t, fs := range c.Forwardings {
		c.Forwardings[t] = slices.Clone(fs)
	}
	return c
}

// MaxNameBytes is the longest id or name: node ids, table names and shard
// ids are 1 to MaxNameBytes bytes of [A-Za-z0-9_.-].
const MaxNameBytes = 64

// maxAddrBytes bounds a node address.
const maxAddrBytes = 255

// ValidName reports whether name is a valid node id, table name or shard id:
// 1 to MaxNameBytes bytes of [A-Za-z0-9_.-]. The error says why not.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("name is empty")
	}
	if len(name) > MaxNameBytes {
		return fmt.Errorf("name %q is %d bytes, limit is %d", name, len(name), MaxNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("name %q: byte %d is not one of [A-Za-z0-9_.-]", name, i)
		}
	}
	return nil
}

// validAddr checks a node address: empty, or at most maxAddrBytes of
// printable ASCII without spaces.
func validAddr(what, addr string) error {
	if len(addr) > maxAddrBytes {
		return fmt.Errorf("%s address is %d bytes, limit is %d", what, len(addr), maxAddrBytes)
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%s address %q: byte %d is not printable ASCII", what, addr, i)
		}
	}
	return nil
}

// validText checks free text that must survive a JSON round trip.
func validText(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	return nil
}

// validTime checks that t can be encoded as JSON (RFC 3339 needs a
// four-digit year).
func validTime(t time.Time) error {
	if y := t.Year(); y < 0 || y > 9999 {
		return fmt.Errorf("time %s: year %d is outside [0, 9999]", t.Format(time.RFC3339Nano), y)
	}
	return nil
}

// validNode checks one node on its own.
func validNode(n Node) error {
	if err := ValidName(n.ID); err != nil {
		return fmt.Errorf("node id: %w", err)
	}
	if err := validAddr("grpc", n.GRPCAddr); err != nil {
		return fmt.Errorf("node %q: %w", n.ID, err)
	}
	if err := validAddr("raft", n.RaftAddr); err != nil {
		return fmt.Errorf("node %q: %w", n.ID, err)
	}
	return nil
}

// validTable checks one table on its own.
func validTable(t Table) error {
	if err := ValidName(t.Name); err != nil {
		return fmt.Errorf("table name: %w", err)
	}
	if t.Kind != TableContent && t.Kind != TableIndex {
		return fmt.Errorf("table %q: kind %q is neither %q nor %q", t.Name, t.Kind, TableContent, TableIndex)
	}
	return nil
}

// childCount says how many children a kind takes: exactly want, or at
// least want when atLeast.
func childCount(k Kind) (want int, atLeast bool) {
	switch k {
	case KindPhysical:
		return 0, false
	case KindReplicating:
		return 1, true
	}
	return 1, false
}

// Validate checks every invariant of the map and returns the first breach
// found (in a deterministic order), wrapped in ErrInvalidMap:
//
//   - map keys equal the ids they hold; ids and names are valid (ValidName);
//     kinds are known; node addresses are printable ASCII;
//   - a physical shard names an existing node and has no children; a
//     logical shard names no node; Replicating has at least one child and
//     the wrappers exactly one;
//   - every link's child exists, no link points to its own shard, weights
//     are at least 1, a parent links a child at most once;
//   - each shard has at most one parent and there are no cycles, so shard
//     trees are trees and a physical shard is in one tree only;
//   - every forwarding's table and root exist, its root has no parent, and
//     each table's forwardings are sorted by strictly increasing base;
//   - audit entries have strictly increasing versions, none above Version.
func (m *Map) Validate() error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidMap, err)
	}
	return nil
}

// validate is Validate without the sentinel.
func (m *Map) validate() error {
	if err := m.validateShape(); err != nil {
		return err
	}
	if err := m.validateAudit(); err != nil {
		return err
	}
	for _, id := range sortedKeys(m.Fences) {
		if v := m.Fences[id]; v > m.Version {
			return fmt.Errorf("fence of %q is version %d, beyond the map's %d", id, v, m.Version)
		}
	}
	return nil
}

// validateShape checks every invariant but the audit log's.
func (m *Map) validateShape() error {
	for _, id := range sortedKeys(m.Nodes) {
		n := m.Nodes[id]
		if err := validNode(n); err != nil {
			return err
		}
		if n.ID != id {
			return fmt.Errorf("node %q is keyed %q", n.ID, id)
		}
	}
	for _, name := range sortedKeys(m.Tables) {
		t := m.Tables[name]
		if err := validTable(t); err != nil {
			return err
		}
		if t.Name != name {
			return fmt.Errorf("table %q is keyed %q", t.Name, name)
		}
	}
	ids := sortedKeys(m.Shards)
	parents := make(map[string]string, len(m.Shards))
	for _, id := range ids {
		s := m.Shards[id]
		if err := m.validShard(s); err != nil {
			return err
		}
		if s.ID != id {
			return fmt.Errorf("shard %q is keyed %q", s.ID, id)
		}
		for _, l := range s.Children {
			if p, ok := parents[l.Child]; ok {
				return fmt.Errorf("shard %q has two parents, %q and %q; a shard has at most one", l.Child, p, id)
			}
			parents[l.Child] = id
		}
	}
	if err := m.checkAcyclic(ids, parents); err != nil {
		return err
	}
	for _, t := range sortedKeys(m.Forwardings) {
		if _, ok := m.Tables[t]; !ok {
			return fmt.Errorf("forwardings of table %q, which does not exist", t)
		}
		for i, f := range m.Forwardings[t] {
			if f.Table != t {
				return fmt.Errorf("forwarding %s is listed under table %q", fwdString(f), t)
			}
			if i > 0 && f.Base <= m.Forwardings[t][i-1].Base {
				return fmt.Errorf("forwardings of table %q are not sorted by strictly increasing base: %s after %s", t, hex64(f.Base), hex64(m.Forwardings[t][i-1].Base))
			}
			if _, ok := m.Shards[f.Root]; !ok {
				return fmt.Errorf("forwarding %s: root shard %q does not exist", fwdString(f), f.Root)
			}
			if p, ok := parents[f.Root]; ok {
				return fmt.Errorf("forwarding %s: root shard %q has parent %q; a forwarding must point to a root", fwdString(f), f.Root, p)
			}
		}
	}
	for _, id := range sortedKeys(m.Fences) {
		if err := ValidName(id); err != nil {
			return fmt.Errorf("fence: %w", err)
		}
	}
	siteIDs := map[uint32]string{}
	for _, name := range sortedKeys(m.Sites) {
		st := m.Sites[name]
		if err := validSite(st); err != nil {
			return err
		}
		if st.Name != name {
			return fmt.Errorf("site %q is keyed %q", st.Name, name)
		}
		if o, ok := siteIDs[st.ID]; ok {
			return fmt.Errorf("sites %q and %q share id %d", o, name, st.ID)
		}
		siteIDs[st.ID] = name
	}
	for _, name := range sortedKeys(m.Sites) {
		if use := m.Sites[name].Use; use != "" {
			if _, ok := m.Sites[use]; !ok {
				return fmt.Errorf("site %q sends its clients to site %q, which the map does not list", name, use)
			}
		}
	}
	for _, id := range sortedKeys(m.Migrations) {
		g := m.Migrations[id]
		if err := validMigration(g); err != nil {
			return err
		}
		if g.ID != id {
			return fmt.Errorf("migration %q is keyed %q", g.ID, id)
		}
	}
	return nil
}

// validateAudit checks the audit log.
func (m *Map) validateAudit() error {
	var last uint64
	for i, a := range m.Audit {
		if a.Version == 0 || a.Version <= last || a.Version > m.Version {
			return fmt.Errorf("audit entry %d has version %d; versions must increase from 1 up to the map's %d", i, a.Version, m.Version)
		}
		last = a.Version
		if err := validTime(a.At); err != nil {
			return fmt.Errorf("audit entry %d: %w", i, err)
		}
		for _, f := range []struct{ what, s string }{{"who", a.Who}, {"from", a.From}, {"what", a.What}} {
			if err := validText(f.what, f.s); err != nil {
				return fmt.Errorf("audit entry %d: %w", i, err)
			}
		}
	}
	return nil
}

// validShard checks one shard and its links, without the parent and cycle
// invariants.
func (m *Map) validShard(s Shard) error {
	if err := ValidName(s.ID); err != nil {
		return fmt.Errorf("shard id: %w", err)
	}
	if !s.Kind.valid() {
		return fmt.Errorf("shard %q: unknown kind %q", s.ID, s.Kind)
	}
	if s.Kind == KindPhysical {
		if s.Node == "" {
			return fmt.Errorf("physical shard %q names no node", s.ID)
		}
		if _, ok := m.Nodes[s.Node]; !ok {
			return fmt.Errorf("physical shard %q is on node %q, which does not exist", s.ID, s.Node)
		}
	} else if s.Node != "" {
		return fmt.Errorf("%s shard %q names node %q; only a physical shard is on a node", s.Kind, s.ID, s.Node)
	}
	switch want, atLeast := childCount(s.Kind); {
	case atLeast && len(s.Children) < want:
		return fmt.Errorf("%s shard %q has no children; it needs at least %d", s.Kind, s.ID, want)
	case !atLeast && len(s.Children) != want:
		return fmt.Errorf("%s shard %q has %d children; it takes exactly %d", s.Kind, s.ID, len(s.Children), want)
	}
	for i, l := range s.Children {
		if l.Child == s.ID {
			return fmt.Errorf("shard %q links to itself", s.ID)
		}
		if _, ok := m.Shards[l.Child]; !ok {
			return fmt.Errorf("shard %q links to %q, which does not exist", s.ID, l.Child)
		}
		if l.Weight < 1 {
			return fmt.Errorf("link %q -> %q has weight %d; weights are at least 1", s.ID, l.Child, l.Weight)
		}
		for _, o := range s.Children[:i] {
			if o.Child == l.Child {
				return fmt.Errorf("shard %q links to %q twice", s.ID, l.Child)
			}
		}
	}
	return nil
}

// checkAcyclic reports a cycle of links. With at most one parent per
// shard, every shard reachable from a parentless shard is on no cycle; any
// other shard is on a cycle or below one.
func (m *Map) checkAcyclic(ids []string, parents map[string]string) error {
	seen := make(map[string]bool, len(ids))
	var stack []string
	for _, id := range ids {
		if _, ok := parents[id]; !ok {
			stack = append(stack, id)
		}
	}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[id] {
			continue
		}
		seen[id] = true
		for _, l := range m.Shards[id].Children {
			stack = append(stack, l.Child)
		}
	}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		// Walk up from id until a shard repeats: that shard is on the cycle.
		on := map[string]bool{}
		c := id
		for !on[c] {
			on[c] = true
			p, ok := parents[c]
			if !ok {
				return fmt.Errorf("shard %q is unreachable from any root", id) // unreachable: a parentless ancestor would have been seen
			}
			c = p
		}
		// Collect the cycle downward from c: parents point up, so walk up
		// and reverse.
		cyc := []string{c}
		for p := parents[c]; p != c; p = parents[p] {
			cyc = append(cyc, p)
		}
		slices.Reverse(cyc)
		// Start at the least id, so the message reads the same whichever
		// shard the walk began at.
		least := slices.Index(cyc, slices.Min(cyc))
		cyc = slices.Concat(cyc[least:], cyc[:least])
		return fmt.Errorf("links form a cycle %s -> %s", strings.Join(cyc, " -> "), cyc[0])
	}
	return nil
}

// LeavesOnNode returns the ids of the physical shards held by node, sorted.
func (m *Map) LeavesOnNode(node string) []string {
	var out []string
	for id, s := range m.Shards {
		if s.Kind == KindPhysical && s.Node == node {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Roots returns the ids of the shards no link points to, sorted.
func (m *Map) Roots() []string {
	linked := map[string]bool{}
	for _, s := range m.Shards {
		for _, l := range s.Children {
			linked[l.Child] = true
		}
	}
	var out []string
	for id := range m.Shards {
		if !linked[id] {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Parent returns the id of the shard linking to id, or "" when none does
// (id is a root or does not exist). In a valid map there is at most one.
func (m *Map) Parent(id string) string {
	var parent string
	for pid, s := range m.Shards {
		for _, l := range s.Children {
			if l.Child == id && (parent == "" || pid < parent) {
				parent = pid
			}
		}
	}
	return parent
}

// sortedKeys returns the keys of m in ascending order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// fwdString formats a forwarding's table and base.
func fwdString(f Forwarding) string {
	return fmt.Sprintf("%q %s", f.Table, hex64(f.Base))
}

// hex64 formats a hash or base as 0x and 16 hex digits.
func hex64(v uint64) string { return fmt.Sprintf("0x%016x", v) }
