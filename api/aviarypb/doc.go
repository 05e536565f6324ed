// Package aviarypb is the generated Go code of the Aviary gRPC API, from
// api/aviary/v1/aviary.proto. Regenerate it with `make proto`
// (scripts/genproto); do not edit the generated files (*.pb.go).
// mutation.go is written by hand.
package aviarypb
