package router

import (
	"fmt"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
)

// ToProto converts a mutation to its wire form.
func ToProto(m *shard.Mutation) *pb.Mutation {
	p := &pb.Mutation{Table: m.Table, Shard: m.Shard}
	if !m.Version.IsZero() {
		p.Version = &pb.Version{Hlc: uint64(m.Version.HLC), Site: m.Version.Site}
	}
	switch m.Op {
	case shard.OpPut:
		p.Op = &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: m.Key, Value: m.Value}}
	case shard.OpDelete:
		p.Op = &pb.Mutation_Delete_{Delete: &pb.Mutation_Delete{Key: m.Key}}
	case shard.OpAppend:
		p.Op = &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: m.Owner, Id: m.ID, Payload: m.Payload}}
	case shard.OpRemove:
		p.Op = &pb.Mutation_Remove_{Remove: &pb.Mutation_Remove{Owner: m.Owner, Id: m.ID}}
	}
	return p
}

// FromProto converts a wire mutation, keeping its shard and version as
// they are (either may be unset).
func FromProto(p *pb.Mutation, m *shard.Mutation) error {
	*m = shard.Mutation{Table: p.Table, Shard: p.Shard}
	if v := p.Version; v != nil {
		m.Version = shard.Version{HLC: ids.Timestamp(v.Hlc), Site: v.Site}
	}
	switch op := p.Op.(type) {
	case *pb.Mutation_Put_:
		m.Op, m.Key, m.Value = shard.OpPut, op.Put.GetKey(), op.Put.GetValue()
	case *pb.Mutation_Delete_:
		m.Op, m.Key = shard.OpDelete, op.Delete.GetKey()
	case *pb.Mutation_Append_:
		m.Op, m.Owner, m.ID, m.Payload = shard.OpAppend, op.Append.GetOwner(), op.Append.GetId(), op.Append.GetPayload()
	case *pb.Mutation_Remove_:
		m.Op, m.Owner, m.ID = shard.OpRemove, op.Remove.GetOwner(), op.Remove.GetId()
	default:
		return fmt.Errorf("%w: op is unset: one of put, delete, append, remove is required", shard.ErrInvalid)
	}
	return nil
}
