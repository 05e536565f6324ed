package gizzard

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzApplyChange decodes arbitrary bytes as a JSON Change and applies it
// to a small populated map. Apply must never panic; a failed change must
// leave the map as it was; after any Apply the map must validate and
// round-trip through JSON.
func FuzzApplyChange(f *testing.F) {
	for _, c := range populatedChanges() {
		b, err := json.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"steps":[{"op":"add_link","parent":"r","child":"r"}]}`,
		`{"steps":[{"op":"create_shard","shard":{"id":"a","kind":"replicating"}},{"op":"add_link","parent":"r","child":"a"},{"op":"add_link","parent":"a","child":"r"}]}`,
		`{"steps":[{"op":"replace_child","parent":"r","child":"p1","new_child":"r"}]}`,
		`{"steps":[{"op":"remove_link","parent":"r","child":"p1"},{"op":"delete_shard","shard_id":"p1"},{"op":"remove_node","node_id":"n1"}],"who":"x","at":"2026-01-01T00:00:00+05:00"}`,
		`{"steps":[{"op":"set_forwarding","forwarding":{"table":"posts","base":18446744073709551615,"root":"p1"}}]}`,
		`{"steps":[{"op":"create_shard","shard":{"id":"w","kind":"read_only","children":[{"child":"p1","weight":-1}]}}]}`,
		`{"steps":[{"op":"remove_forwarding","forwarding":{"table":"posts","base":0}},{"op":"set_weight","parent":"r","child":"p2","weight":9223372036854775807}]}`,
		`{"steps":[{"op":"add_node","node":{"id":"n\u0000"}}],"who":"\ud800"}`,
		`{"steps":[{}]}`,
		`{"steps":null}`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	base := NewMap()
	for _, c := range populatedChanges()[:2] {
		if err := base.Apply(c); err != nil {
			f.Fatal(err)
		}
	}
	baseJSON, err := json.Marshal(base)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Change
		if json.Unmarshal(data, &c) != nil {
			return
		}
		m := base.Clone()
		err := m.Apply(c)
		if verr := m.Validate(); verr != nil {
			t.Fatalf("map invalid after Apply (err %v): %v", err, verr)
		}
		b, merr := json.Marshal(m)
		if merr != nil {
			t.Fatalf("marshal after Apply: %v", merr)
		}
		if err != nil {
			if string(b) != string(baseJSON) {
				t.Fatalf("failed change (%v) altered the map", err)
			}
			if m.Check(c) == nil {
				t.Fatalf("Check passes a change Apply refused: %v", err)
			}
			return
		}
		if m.Version != base.Version+1 || len(m.Audit) != len(base.Audit)+1 {
			t.Fatalf("version %d with %d audit entries after one change to version %d", m.Version, len(m.Audit), base.Version)
		}
		var back Map
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(&back, m) {
			t.Fatalf("round trip differs:\n%+v\n%+v", &back, m)
		}
	})
}
