package natsx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MaxNameLen is the longest stream name JetStream accepts.
const MaxNameLen = 255

// DuplicateWindow is the duplicate-detection window of streams made by
// EnsureStream (or their MaxAge, if shorter). Replication does not rely on
// JetStream's deduplication, since applies are idempotent, so it is kept
// small.
const DuplicateWindow = time.Second

// StreamConfig is what EnsureStream sets on a stream. The stream always
// keeps its messages in files, under limits retention, discarding its
// oldest messages when a limit is reached.
type StreamConfig struct {
	// Name names the stream; see ValidateStreamName.
	Name string
	// Subjects are the subjects whose messages the stream stores. Empty
	// means JetStream's default: the one subject Name.
	Subjects []string
	// MaxAge is how long a message is kept. 0 keeps messages until
	// MaxBytes evicts them; otherwise at least 100ms.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size. 0 or less: no bound.
	MaxBytes int64
	// Replicas is how many servers of a cluster keep the stream. 0 means
	// 1, the only value a standalone server takes.
	Replicas int
}

// ValidateStreamName reports whether name is a valid JetStream stream name:
// not empty, at most MaxNameLen bytes, and without whitespace, '.', '*',
// '>', '/' or '\'.
func ValidateStreamName(name string) error {
	switch {
	case name == "":
		return errors.New("natsx: stream name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("natsx: stream name is %d bytes long, more than %d", len(name), MaxNameLen)
	case strings.ContainsAny(name, " \t\r\n\f.*>/\\"):
		return fmt.Errorf("natsx: invalid stream name %q: it may not contain whitespace, '.', '*', '>', '/' or '\\'", name)
	}
	return nil
}

// EnsureStream creates the stream cfg describes, or updates it to cfg if
// it exists, and returns it. Calling it again with the same cfg changes
// nothing. Some changes are refused by JetStream (fewer subjects than
// stored messages need, say, or more replicas than servers) and returned
// as errors.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if err := ValidateStreamName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.MaxAge < 0 {
		return nil, fmt.Errorf("natsx: stream %s: negative MaxAge %s", cfg.Name, cfg.MaxAge)
	}
	if cfg.MaxAge > 0 && cfg.MaxAge < 100*time.Millisecond {
		return nil, fmt.Errorf("natsx: stream %s: MaxAge %s is less than 100ms", cfg.Name, cfg.MaxAge)
	}
	if cfg.Replicas < 0 {
		return nil, fmt.Errorf("natsx: stream %s: negative Replicas %d", cfg.Name, cfg.Replicas)
	}
	maxBytes := cfg.MaxBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	replicas := cfg.Replicas
	if replicas == 0 {
		replicas = 1
	}
	dup := DuplicateWindow
	if cfg.MaxAge > 0 && cfg.MaxAge < dup {
		dup = cfg.MaxAge
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       cfg.Name,
		Subjects:   cfg.Subjects,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		Storage:    jetstream.FileStorage,
		MaxAge:     cfg.MaxAge,
		MaxBytes:   maxBytes,
		MaxMsgs:    -1,
		Replicas:   replicas,
		Duplicates: dup,
	})
	if err != nil {
		return nil, fmt.Errorf("natsx: ensure stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// EnsureKV returns the key-value bucket named bucket, creating it, in
// files and keeping one value per key, if it does not exist. An existing
// bucket is returned as it is, whatever its settings. Bucket names are
// letters, digits, '-' and '_'.
func EnsureKV(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:  bucket,
		History: 1,
		Storage: jetstream.FileStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, bucket)
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrInvalidBucketName) {
			return nil, fmt.Errorf("natsx: invalid bucket name %q: use letters, digits, '-' and '_': %w", bucket, err)
		}
		return nil, fmt.Errorf("natsx: ensure bucket %s: %w", bucket, err)
	}
	return kv, nil
}
