package timeline

import "encoding/binary"

// EntrySize is the number of bytes a timeline keeps per entry: 8 of status
// id, 8 of author id and 4 of flags, with no padding.
const EntrySize = 20

// Entry is one item of a home timeline: a status, who wrote it, and 4 bytes
// of flags saying what kind of status it is (a repost, a reply and so on;
// the meaning of the bits belongs to the caller).
//
// A status id is an ids.ID: time-ordered, so a timeline sorted by StatusID
// is sorted by time. StatusID 0 is never issued and is not a valid entry.
// An entry is immutable: a status id always comes with the same author and
// flags, so a timeline keeps the first copy of an id it is given and
// ignores the others.
type Entry struct {
	// StatusID is the id of the status; a timeline holds each at most once.
	StatusID uint64
	// AuthorID is the id of the status's author.
	AuthorID uint64
	// Flags are 4 bytes the caller gives meaning to.
	Flags uint32
}

// packed is an Entry as a timeline stores it: EntrySize bytes, little
// endian (a Go Entry takes 24 bytes because of alignment). Reading a field
// compiles to one unaligned load on amd64 and arm64.
type packed [EntrySize]byte

func pack(e Entry) packed {
	var p packed
	binary.LittleEndian.PutUint64(p[0:8], e.StatusID)
	binary.LittleEndian.PutUint64(p[8:16], e.AuthorID)
	binary.LittleEndian.PutUint32(p[16:20], e.Flags)
	return p
}

// id returns the entry's StatusID.
func (p *packed) id() uint64 { return binary.LittleEndian.Uint64(p[0:8]) }

func (p *packed) entry() Entry {
	return Entry{
		StatusID: binary.LittleEndian.Uint64(p[0:8]),
		AuthorID: binary.LittleEndian.Uint64(p[8:16]),
		Flags:    binary.LittleEndian.Uint32(p[16:20]),
	}
}
