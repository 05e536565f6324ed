package aviarypb

// The single-mutation requests as the Mutation a Write of them carries:
// the node answers Put, Delete, Append and Remove as one-mutation Writes,
// and client.Stream sends them as such.

// Mutation returns r as a Write mutation.
func (r *PutRequest) Mutation() *Mutation {
	return &Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &Mutation_Put_{Put: &Mutation_Put{Key: r.Key, Value: r.Value}}}
}

// Mutation returns r as a Write mutation.
func (r *DeleteRequest) Mutation() *Mutation {
	return &Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &Mutation_Delete_{Delete: &Mutation_Delete{Key: r.Key}}}
}

// Mutation returns r as a Write mutation.
func (r *AppendRequest) Mutation() *Mutation {
	return &Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &Mutation_Append_{Append: &Mutation_Append{Owner: r.Owner, Id: r.Id, Payload: r.Payload}}}
}

// Mutation returns r as a Write mutation.
func (r *RemoveRequest) Mutation() *Mutation {
	return &Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &Mutation_Remove_{Remove: &Mutation_Remove{Owner: r.Owner, Id: r.Id}}}
}
