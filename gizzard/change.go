package gizzard

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Change is one operator change of the map. Its steps apply atomically (all
// or none) and bump the map's Version by exactly 1.
type Change struct {
	Steps []Step `json:"steps"`
	// Who identifies the operator or tool.
	Who string `json:"who"`
	// From is the address or host the change came from.
	From string `json:"from"`
	// At is set by the proposer, so that Apply stays deterministic. It is
	// recorded in UTC.
	At time.Time `json:"at"`
	// IfVersion, when non-zero, makes the change a compare-and-swap: it
	// applies only to the map at exactly this version. Tools that compute
	// a change from a map they read set it, so that a concurrent change
	// makes theirs fail instead of applying to a map they did not see.
	IfVersion uint64 `json:"if_version,omitempty"`
}

// Op is the operation of a Step.
type Op string

// Operations. Each uses only some of a Step's fields (listed); any other
// field set is an error.
const (
	// OpAddNode adds Node. Its id must be new.
	OpAddNode Op = "add_node"
	// OpUpdateNode replaces the addresses and roles of the existing node
	// Node.ID (a node that restarted on other ports or with other roles).
	OpUpdateNode Op = "update_node"
	// OpRemoveNode removes the node NodeID, which must hold no shard.
	OpRemoveNode Op = "remove_node"
	// OpCreateTable creates Table. Creating an existing table of the same
	// kind does nothing; of another kind it is an error.
	OpCreateTable Op = "create_table"
	// OpCreateShard creates Shard, with its children if it lists any (each
	// must exist and have no parent yet; a zero weight means 1). Its id
	// must be new.
	OpCreateShard Op = "create_shard"
	// OpDeleteShard deletes the shard ShardID, which must have no parent,
	// no children and no forwarding: delete trees bottom-up.
	OpDeleteShard Op = "delete_shard"
	// OpAddLink links Parent to Child with Weight (zero means 1). Child
	// must have no parent yet, the link must not close a cycle, and a
	// wrapper takes one child only.
	OpAddLink Op = "add_link"
	// OpRemoveLink removes the link from Parent to Child.
	OpRemoveLink Op = "remove_link"
	// OpSetWeight sets the weight (at least 1) of the link from Parent to
	// Child.
	OpSetWeight Op = "set_weight"
	// OpReplaceChild turns Parent's link to Child into a link to NewChild
	// with the same weight and position; NewChild must have no parent yet.
	// It inserts or removes a wrapper in one change (see the package
	// documentation).
	OpReplaceChild Op = "replace_child"
	// OpSetForwarding creates the forwarding of Forwarding.Table at
	// Forwarding.Base to Forwarding.Root, which must exist and have no
	// parent. The table must have no forwarding at that base yet: to
	// re-point one, remove it (naming its root) and set it again in the
	// same change.
	OpSetForwarding Op = "set_forwarding"
	// OpRemoveForwarding removes the forwarding of Forwarding.Table at
	// Forwarding.Base. A non-empty Forwarding.Root must match the current
	// root (a guard against removing a forwarding that moved).
	OpRemoveForwarding Op = "remove_forwarding"
	// OpSetMigration creates or updates the migration record Migration.
	// Expect is the state it must be in now (a compare-and-swap); empty
	// means it must not exist yet. Its Created and Updated are set from
	// the change's At. A step that changes the state keeps the record's
	// Paused, Force and Rate (an operator's); one that keeps the state
	// sets them.
	OpSetMigration Op = "set_migration"
	// OpRemoveMigration removes the migration record MigrationID.
	OpRemoveMigration Op = "remove_migration"
	// OpAddSite adds Site (name and id new); an empty state means active.
	OpAddSite Op = "add_site"
	// OpUpdateSite replaces the existing site Site.Name (its id stays).
	OpUpdateSite Op = "update_site"
	// OpRemoveSite removes the site SiteName.
	OpRemoveSite Op = "remove_site"
	// OpNote changes nothing: it records Note (at most MaxNote bytes) in
	// the audit log, as a DR drill records its report.
	OpNote Op = "note"
)

// Step is one operation of a Change. Only the fields its Op needs are set.
type Step struct {
	Op         Op          `json:"op"`
	Node       *Node       `json:"node,omitempty"`
	NodeID     string      `json:"node_id,omitempty"`
	Table      *Table      `json:"table,omitempty"`
	Shard      *Shard      `json:"shard,omitempty"`
	ShardID    string      `json:"shard_id,omitempty"`
	Parent     string      `json:"parent,omitempty"`
	Child      string      `json:"child,omitempty"`
	NewChild   string      `json:"new_child,omitempty"`
	Weight     int         `json:"weight,omitempty"`
	Forwarding *Forwarding `json:"forwarding,omitempty"`
	Migration  *Migration  `json:"migration,omitempty"`
	// Expect is the state OpSetMigration requires the migration to be in.
	Expect      MigrationState `json:"expect,omitempty"`
	MigrationID string         `json:"migration_id,omitempty"`
	Site        *Site          `json:"site,omitempty"`
	SiteName    string         `json:"site_name,omitempty"`
	Note        string         `json:"note,omitempty"`
}

// MaxNote bounds the text of an OpNote step.
const MaxNote = 4096

// String describes the step for the audit log and error messages, for
// example `add_link "t-0" -> "t-0-b" (weight 1)`.
func (s Step) String() string {
	switch s.Op {
	case OpAddNode:
		if s.Node == nil {
			return "add_node (no node)"
		}
		return fmt.Sprintf("add_node %q (grpc %q, raft %q)", s.Node.ID, s.Node.GRPCAddr, s.Node.RaftAddr)
	case OpUpdateNode:
		if s.Node == nil {
			return "update_node (no node)"
		}
		return fmt.Sprintf("update_node %q (grpc %q, raft %q)", s.Node.ID, s.Node.GRPCAddr, s.Node.RaftAddr)
	case OpRemoveNode:
		return fmt.Sprintf("remove_node %q", s.NodeID)
	case OpCreateTable:
		if s.Table == nil {
			return "create_table (no table)"
		}
		return fmt.Sprintf("create_table %s %q", s.Table.Kind, s.Table.Name)
	case OpCreateShard:
		if s.Shard == nil {
			return "create_shard (no shard)"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "create_shard %s %q", s.Shard.Kind, s.Shard.ID)
		if s.Shard.Node != "" {
			fmt.Fprintf(&b, " on node %q", s.Shard.Node)
		}
		for i, l := range s.Shard.Children {
			if i == 0 {
				b.WriteString(" over ")
			} else {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q (weight %d)", l.Child, linkWeight(l.Weight))
		}
		return b.String()
	case OpDeleteShard:
		return fmt.Sprintf("delete_shard %q", s.ShardID)
	case OpAddLink:
		return fmt.Sprintf("add_link %q -> %q (weight %d)", s.Parent, s.Child, linkWeight(s.Weight))
	case OpRemoveLink:
		return fmt.Sprintf("remove_link %q -> %q", s.Parent, s.Child)
	case OpSetWeight:
		return fmt.Sprintf("set_weight %q -> %q to %d", s.Parent, s.Child, s.Weight)
	case OpReplaceChild:
		return fmt.Sprintf("replace_child %q -> %q with %q -> %q", s.Parent, s.Child, s.Parent, s.NewChild)
	case OpSetForwarding:
		if s.Forwarding == nil {
			return "set_forwarding (no forwarding)"
		}
		return fmt.Sprintf("set_forwarding %s -> %q", fwdString(*s.Forwarding), s.Forwarding.Root)
	case OpRemoveForwarding:
		if s.Forwarding == nil {
			return "remove_forwarding (no forwarding)"
		}
		if s.Forwarding.Root != "" {
			return fmt.Sprintf("remove_forwarding %s -> %q", fwdString(*s.Forwarding), s.Forwarding.Root)
		}
		return fmt.Sprintf("remove_forwarding %s", fwdString(*s.Forwarding))
	case OpSetMigration:
		if s.Migration == nil {
			return "set_migration (no migration)"
		}
		g := s.Migration
		what := fmt.Sprintf("set_migration %q %s %q -> %q on %q: %s", g.ID, g.Kind, g.Source, g.Dest, g.DestNode, g.State)
		if s.Expect != "" {
			what += fmt.Sprintf(" (was %s)", s.Expect)
		}
		if g.Paused {
			what += " paused"
		}
		return what
	case OpRemoveMigration:
		return fmt.Sprintf("remove_migration %q", s.MigrationID)
	case OpAddSite, OpUpdateSite:
		if s.Site == nil {
			return string(s.Op) + " (no site)"
		}
		what := fmt.Sprintf("%s %q (id %d, nats %q, %s", s.Op, s.Site.Name, s.Site.ID, s.Site.NATSURL, s.Site.State)
		if s.Site.Use != "" {
			what += fmt.Sprintf(", use %q", s.Site.Use)
		}
		return what + ")"
	case OpRemoveSite:
		return fmt.Sprintf("remove_site %q", s.SiteName)
	case OpNote:
		return "note: " + s.Note
	}
	return fmt.Sprintf("op %q", s.Op)
}

// linkWeight is the weight a link is created with: zero means 1.
func linkWeight(w int) int {
	if w == 0 {
		return 1
	}
	return w
}

// Apply applies c to m: it checks every step against the map as changed by
// the steps before it, then the whole resulting map (Validate). On success
// Version grows by 1 and one AuditEntry records the change. On any error m
// is unchanged and the error, wrapping ErrInvalidChange, names the step and
// the reason, e.g.
//
//	gizzard: invalid change: step 2 (add_link "a" -> "b" (weight 1)): would create a cycle a -> b -> a
//
// Apply depends only on m and c, never on clocks, randomness or map
// iteration order, so replicas applying the same changes hold identical
// maps.
func (m *Map) Apply(c Change) error {
	next, err := m.applied(c)
	if err != nil {
		return err
	}
	*m = *next
	return nil
}

// Check reports the error Apply would return for c, without changing m.
func (m *Map) Check(c Change) error {
	_, err := m.applied(c)
	return err
}

// applied returns the map m becomes by c.
func (m *Map) applied(c Change) (*Map, error) {
	if len(c.Steps) == 0 {
		return nil, fmt.Errorf("%w: a change needs at least one step", ErrInvalidChange)
	}
	if c.IfVersion != 0 && c.IfVersion != m.Version {
		return nil, fmt.Errorf("%w: %w: it was made for map version %d, the map is at version %d", ErrInvalidChange, ErrVersionMoved, c.IfVersion, m.Version)
	}
	if m.Version == math.MaxUint64 {
		return nil, fmt.Errorf("%w: map version %d cannot grow", ErrInvalidChange, m.Version)
	}
	at := c.At.UTC().Round(0)
	if err := validTime(at); err != nil {
		return nil, fmt.Errorf("%w: at: %w", ErrInvalidChange, err)
	}
	if err := validText("who", c.Who); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidChange, err)
	}
	if err := validText("from", c.From); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidChange, err)
	}
	next := m.Clone()
	next.ensureMaps()
	a := newApplier(next)
	a.at = at
	what := make([]string, len(c.Steps))
	for i, s := range c.Steps {
		what[i] = s.String()
		if err := a.step(s); err != nil {
			return nil, fmt.Errorf("%w: step %d (%s): %w", ErrInvalidChange, i+1, what[i], err)
		}
	}
	next.Version++
	updateFences(m, next)
	next.Audit = append(next.Audit, AuditEntry{
		Version: next.Version,
		At:      at,
		Who:     c.Who,
		From:    c.From,
		What:    strings.Join(what, "; "),
	})
	// The audit entries before the new one were valid already, and the new
	// one's fields were checked above: validate the rest.
	if err := next.validateShape(); err != nil {
		return nil, fmt.Errorf("%w: resulting map: %w", ErrInvalidChange, err)
	}
	return next, nil
}

// applier applies steps to a working copy of a map (a deep copy, so it
// edits slices in place), keeping an index of each shard's parent.
type applier struct {
	m       *Map
	parents map[string]string // child id -> parent id
	at      time.Time         // the change's At
}

func newApplier(m *Map) *applier {
	a := &applier{m: m, parents: make(map[string]string, len(m.Shards))}
	// Sorted, so that even a map with a shard under two parents (which the
	// final Validate rejects) indexes the same parent on every replica.
	for _, id := range sortedKeys(m.Shards) {
		for _, l := range m.Shards[id].Children {
			if _, ok := a.parents[l.Child]; !ok {
				a.parents[l.Child] = id
			}
		}
	}
	return a
}

// Step fields, for checking that a step sets only what its op uses.
type field uint16

const (
	fNode field = 1 << iota
	fNodeID
	fTable
	fShard
	fShardID
	fParent
	fChild
	fNewChild
	fWeight
	fForwarding
	fMigration
	fExpect
	fMigrationID
	fSite
	fSiteName
	fNote
)

// fieldNames are the JSON names of the fields, in bit order.
func fieldNames(f field) []string {
	var names []string
	for i, n := range [...]string{"node", "node_id", "table", "shard", "shard_id", "parent", "child", "new_child", "weight", "forwarding", "migration", "expect", "migration_id", "site", "site_name", "note"} {
		if f&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return names
}

// fields returns the fields op uses, and whether op is known.
func (op Op) fields() (field, bool) {
	switch op {
	case OpAddNode, OpUpdateNode:
		return fNode, true
	case OpRemoveNode:
		return fNodeID, true
	case OpCreateTable:
		return fTable, true
	case OpCreateShard:
		return fShard, true
	case OpDeleteShard:
		return fShardID, true
	case OpAddLink, OpSetWeight:
		return fParent | fChild | fWeight, true
	case OpRemoveLink:
		return fParent | fChild, true
	case OpReplaceChild:
		return fParent | fChild | fNewChild, true
	case OpSetForwarding, OpRemoveForwarding:
		return fForwarding, true
	case OpSetMigration:
		return fMigration | fExpect, true
	case OpRemoveMigration:
		return fMigrationID, true
	case OpAddSite, OpUpdateSite:
		return fSite, true
	case OpRemoveSite:
		return fSiteName, true
	case OpNote:
		return fNote, true
	}
	return 0, false
}

// fields returns the set of fields s sets.
func (s Step) fields() field {
	var f field
	for _, x := range []struct {
		set bool
		f   field
	}{
		{s.Node != nil, fNode}, {s.NodeID != "", fNodeID}, {s.Table != nil, fTable},
		{s.Shard != nil, fShard}, {s.ShardID != "", fShardID}, {s.Parent != "", fParent},
		{s.Child != "", fChild}, {s.NewChild != "", fNewChild}, {s.Weight != 0, fWeight},
		{s.Forwarding != nil, fForwarding}, {s.Migration != nil, fMigration},
		{s.Expect != "", fExpect}, {s.MigrationID != "", fMigrationID},
		{s.Site != nil, fSite}, {s.SiteName != "", fSiteName}, {s.Note != "", fNote},
	} {
		if x.set {
			f |= x.f
		}
	}
	return f
}

// step applies one step, or returns why it cannot.
func (a *applier) step(s Step) error {
	allowed, ok := s.Op.fields()
	if !ok {
		if s.Op == "" {
			return fmt.Errorf("op is missing")
		}
		return fmt.Errorf("unknown op %q", s.Op)
	}
	if extra := s.fields() &^ allowed; extra != 0 {
		return fmt.Errorf("%s does not take %s", s.Op, strings.Join(fieldNames(extra), ", "))
	}
	switch s.Op {
	case OpAddNode:
		return a.addNode(s.Node)
	case OpUpdateNode:
		return a.updateNode(s.Node)
	case OpRemoveNode:
		return a.removeNode(s.NodeID)
	case OpCreateTable:
		return a.createTable(s.Table)
	case OpCreateShard:
		return a.createShard(s.Shard)
	case OpDeleteShard:
		return a.deleteShard(s.ShardID)
	case OpAddLink:
		return a.addLink(s.Parent, s.Child, s.Weight)
	case OpRemoveLink:
		return a.removeLink(s.Parent, s.Child)
	case OpSetWeight:
		return a.setWeight(s.Parent, s.Child, s.Weight)
	case OpReplaceChild:
		return a.replaceChild(s.Parent, s.Child, s.NewChild)
	case OpSetForwarding:
		return a.setForwarding(s.Forwarding)
	case OpRemoveForwarding:
		return a.removeForwarding(s.Forwarding)
	case OpSetMigration:
		return a.setMigration(s.Migration, s.Expect, a.at)
	case OpRemoveMigration:
		return a.removeMigration(s.MigrationID)
	case OpAddSite:
		return a.addSite(s.Site, false)
	case OpUpdateSite:
		return a.addSite(s.Site, true)
	case OpRemoveSite:
		return a.removeSite(s.SiteName)
	case OpNote:
		if s.Note == "" {
			return fmt.Errorf("a note needs text")
		}
		if len(s.Note) > MaxNote {
			return fmt.Errorf("a note of %d bytes is above %d", len(s.Note), MaxNote)
		}
		return validText("note", s.Note)
	}
	panic("gizzard: op " + string(s.Op) + " has fields but no handler")
}

func (a *applier) updateNode(n *Node) error {
	if n == nil {
		return fmt.Errorf("node is missing")
	}
	if err := validNode(*n); err != nil {
		return err
	}
	if _, ok := a.m.Nodes[n.ID]; !ok {
		return fmt.Errorf("node %q does not exist", n.ID)
	}
	a.m.Nodes[n.ID] = *n
	return nil
}

func (a *applier) addNode(n *Node) error {
	if n == nil {
		return fmt.Errorf("node is missing")
	}
	if err := validNode(*n); err != nil {
		return err
	}
	if _, ok := a.m.Nodes[n.ID]; ok {
		return fmt.Errorf("node %q already exists", n.ID)
	}
	a.m.Nodes[n.ID] = *n
	return nil
}

func (a *applier) removeNode(id string) error {
	if id == "" {
		return fmt.Errorf("node_id is missing")
	}
	if _, ok := a.m.Nodes[id]; !ok {
		return fmt.Errorf("node %q does not exist", id)
	}
	if held := a.m.LeavesOnNode(id); len(held) > 0 {
		return fmt.Errorf("node %q still holds %d shard(s), first %q; move or delete them first", id, len(held), held[0])
	}
	delete(a.m.Nodes, id)
	return nil
}

func (a *applier) createTable(t *Table) error {
	if t == nil {
		return fmt.Errorf("table is missing")
	}
	if err := validTable(*t); err != nil {
		return err
	}
	if old, ok := a.m.Tables[t.Name]; ok {
		if old.Kind != t.Kind {
			return fmt.Errorf("table %q already exists as a %s table", t.Name, old.Kind)
		}
		return nil
	}
	a.m.Tables[t.Name] = *t
	return nil
}

func (a *applier) shard(what, id string) (Shard, error) {
	if id == "" {
		return Shard{}, fmt.Errorf("%s is missing", what)
	}
	s, ok := a.m.Shards[id]
	if !ok {
		return Shard{}, fmt.Errorf("shard %q does not exist", id)
	}
	return s, nil
}

func (a *applier) createShard(sh *Shard) error {
	if sh == nil {
		return fmt.Errorf("shard is missing")
	}
	s := *sh
	if err := ValidName(s.ID); err != nil {
		return fmt.Errorf("shard id: %w", err)
	}
	if !s.Kind.valid() {
		return fmt.Errorf("shard %q: unknown kind %q", s.ID, s.Kind)
	}
	if _, ok := a.m.Shards[s.ID]; ok {
		return fmt.Errorf("shard %q already exists", s.ID)
	}
	if s.Kind == KindPhysical {
		if s.Node == "" {
			return fmt.Errorf("physical shard %q names no node", s.ID)
		}
		if _, ok := a.m.Nodes[s.Node]; !ok {
			return fmt.Errorf("node %q does not exist", s.Node)
		}
		if len(s.Children) > 0 {
			return fmt.Errorf("physical shard %q cannot have children", s.ID)
		}
		s.Children = nil
		a.m.Shards[s.ID] = s
		return nil
	}
	if s.Node != "" {
		return fmt.Errorf("%s shard %q cannot be on a node; only a physical shard is", s.Kind, s.ID)
	}
	if s.Kind.IsWrapper() && len(s.Children) > 1 {
		return fmt.Errorf("%s shard %q has %d children; it takes exactly 1", s.Kind, s.ID, len(s.Children))
	}
	children := make([]Link, 0, len(s.Children))
	for _, l := range s.Children {
		if l.Child == s.ID {
			return fmt.Errorf("would create a cycle %s -> %s", s.ID, s.ID)
		}
		if _, err := a.shard("child", l.Child); err != nil {
			return err
		}
		if l.Weight < 0 {
			return fmt.Errorf("link %q -> %q has weight %d; weights are at least 1", s.ID, l.Child, l.Weight)
		}
		if slices.ContainsFunc(children, func(o Link) bool { return o.Child == l.Child }) {
			return fmt.Errorf("shard %q lists child %q twice", s.ID, l.Child)
		}
		if p, ok := a.parents[l.Child]; ok {
			return fmt.Errorf("shard %q already has parent %q; a shard has at most one", l.Child, p)
		}
		children = append(children, Link{Child: l.Child, Weight: linkWeight(l.Weight)})
	}
	if len(children) == 0 {
		children = nil
	}
	s.Children = children
	for _, l := range children {
		a.parents[l.Child] = s.ID
	}
	a.m.Shards[s.ID] = s
	return nil
}

func (a *applier) deleteShard(id string) error {
	s, err := a.shard("shard_id", id)
	if err != nil {
		return err
	}
	if p, ok := a.parents[id]; ok {
		return fmt.Errorf("shard %q is a child of %q; remove the link first", id, p)
	}
	if len(s.Children) > 0 {
		return fmt.Errorf("shard %q still has %d child(ren), first %q; delete bottom-up", id, len(s.Children), s.Children[0].Child)
	}
	for _, t := range sortedKeys(a.m.Forwardings) {
		for _, f := range a.m.Forwardings[t] {
			if f.Root == id {
				return fmt.Errorf("shard %q is the root of forwarding %s", id, fwdString(f))
			}
		}
	}
	delete(a.m.Shards, id)
	return nil
}

// link returns the parent shard and the index of its link to child.
func (a *applier) link(parent, child string) (Shard, int, error) {
	p, err := a.shard("parent", parent)
	if err != nil {
		return Shard{}, 0, err
	}
	if child == "" {
		return Shard{}, 0, fmt.Errorf("child is missing")
	}
	i := slices.IndexFunc(p.Children, func(l Link) bool { return l.Child == child })
	if i < 0 {
		return Shard{}, 0, fmt.Errorf("no link %q -> %q", parent, child)
	}
	return p, i, nil
}

// cycleTo reports the cycle a link from parent to child would close: child
// is parent itself or one of its ancestors.
func (a *applier) cycleTo(parent, child string) error {
	up := []string{parent}
	for c := parent; c != child; {
		p, ok := a.parents[c]
		if !ok || len(up) > len(a.m.Shards) {
			return nil
		}
		up = append(up, p)
		c = p
	}
	path := []string{parent}
	for i := len(up) - 1; i >= 0; i-- {
		path = append(path, up[i])
	}
	return fmt.Errorf("would create a cycle %s", strings.Join(path, " -> "))
}

// adoptable checks that child can be linked under parent: no cycle, not
// already under parent, no other parent.
func (a *applier) adoptable(parent, child string) error {
	if err := a.cycleTo(parent, child); err != nil {
		return err
	}
	if p, ok := a.parents[child]; ok {
		if p == parent {
			return fmt.Errorf("link %q -> %q already exists", parent, child)
		}
		return fmt.Errorf("shard %q already has parent %q; a shard has at most one", child, p)
	}
	return nil
}

func (a *applier) addLink(parent, child string, weight int) error {
	p, err := a.shard("parent", parent)
	if err != nil {
		return err
	}
	if _, err := a.shard("child", child); err != nil {
		return err
	}
	if p.Kind == KindPhysical {
		return fmt.Errorf("physical shard %q cannot have children", parent)
	}
	if weight < 0 {
		return fmt.Errorf("weight %d; weights are at least 1", weight)
	}
	if err := a.adoptable(parent, child); err != nil {
		return err
	}
	if p.Kind.IsWrapper() && len(p.Children) > 0 {
		return fmt.Errorf("%s shard %q already has child %q; it takes exactly 1", p.Kind, parent, p.Children[0].Child)
	}
	p.Children = append(p.Children, Link{Child: child, Weight: linkWeight(weight)})
	a.m.Shards[parent] = p
	a.parents[child] = parent
	return nil
}

func (a *applier) removeLink(parent, child string) error {
	p, i, err := a.link(parent, child)
	if err != nil {
		return err
	}
	p.Children = slices.Delete(p.Children, i, i+1)
	if len(p.Children) == 0 {
		p.Children = nil
	}
	a.m.Shards[parent] = p
	delete(a.parents, child)
	return nil
}

func (a *applier) setWeight(parent, child string, weight int) error {
	p, i, err := a.link(parent, child)
	if err != nil {
		return err
	}
	if weight < 1 {
		return fmt.Errorf("weight %d; weights are at least 1", weight)
	}
	p.Children[i].Weight = weight
	return nil
}

func (a *applier) replaceChild(parent, child, newChild string) error {
	p, i, err := a.link(parent, child)
	if err != nil {
		return err
	}
	if _, err := a.shard("new_child", newChild); err != nil {
		return err
	}
	if newChild == child {
		return fmt.Errorf("new_child is the child itself")
	}
	if err := a.adoptable(parent, newChild); err != nil {
		return err
	}
	p.Children[i].Child = newChild
	delete(a.parents, child)
	a.parents[newChild] = parent
	return nil
}

func (a *applier) table(name string) error {
	if name == "" {
		return fmt.Errorf("forwarding table is missing")
	}
	if _, ok := a.m.Tables[name]; !ok {
		return fmt.Errorf("table %q does not exist", name)
	}
	return nil
}

func (a *applier) setForwarding(f *Forwarding) error {
	if f == nil {
		return fmt.Errorf("forwarding is missing")
	}
	if err := a.table(f.Table); err != nil {
		return err
	}
	if _, err := a.shard("forwarding root", f.Root); err != nil {
		return err
	}
	if p, ok := a.parents[f.Root]; ok {
		return fmt.Errorf("shard %q has parent %q; a forwarding must point to a root", f.Root, p)
	}
	fs := a.m.Forwardings[f.Table]
	i, found := slices.BinarySearchFunc(fs, f.Base, func(x Forwarding, b uint64) int { return cmp.Compare(x.Base, b) })
	if found {
		return fmt.Errorf("table %q already has a forwarding at %s, to %q; remove it first", f.Table, hex64(f.Base), fs[i].Root)
	}
	a.m.Forwardings[f.Table] = slices.Insert(fs, i, *f)
	return nil
}

func (a *applier) removeForwarding(f *Forwarding) error {
	if f == nil {
		return fmt.Errorf("forwarding is missing")
	}
	if err := a.table(f.Table); err != nil {
		return err
	}
	fs := a.m.Forwardings[f.Table]
	i := slices.IndexFunc(fs, func(x Forwarding) bool { return x.Base == f.Base })
	if i < 0 {
		return fmt.Errorf("no forwarding %s", fwdString(*f))
	}
	if f.Root != "" && fs[i].Root != f.Root {
		return fmt.Errorf("forwarding %s points to %q, not %q", fwdString(*f), fs[i].Root, f.Root)
	}
	fs = slices.Delete(fs, i, i+1)
	if len(fs) == 0 {
		delete(a.m.Forwardings, f.Table)
	} else {
		a.m.Forwardings[f.Table] = fs
	}
	return nil
}
