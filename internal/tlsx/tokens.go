package tlsx

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/metadata"
)

// Tokens are bearer tokens for clients that cannot present a certificate:
// each maps to an identity (name and role: read, write or admin). Only the
// tokens' SHA-256 hashes are kept, in a file of lines
//
//	<sha256 in hex> <name> <role>
//
// (# starts a comment). ops certs token adds one.
type Tokens struct {
	byHash map[string]Identity
}

// NewToken returns a new random token and the line that grants it to id.
func NewToken(id Identity) (token, line string, err error) {
	if err := id.Validate(); err != nil {
		return "", "", err
	}
	if id.Role == RoleNode || id.Role == RoleRelay {
		return "", "", fmt.Errorf("tlsx: a token cannot carry role %s: nodes and relays need certificates", id.Role)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, fmt.Sprintf("%s %s %s", hashToken(token), id.Name, id.Role), nil
}

func hashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// LoadTokens reads a tokens file.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tlsx: tokens: %w", err)
	}
	defer f.Close()
	t := &Tokens{byHash: map[string]Identity{}}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 {
			return nil, fmt.Errorf("tlsx: %s:%d: want \"<sha256> <name> <role>\"", path, n)
		}
		if _, err := hex.DecodeString(fields[0]); err != nil || len(fields[0]) != 64 {
			return nil, fmt.Errorf("tlsx: %s:%d: %q is not a SHA-256 in hex", path, n, fields[0])
		}
		role, err := ParseRole(fields[2])
		if err != nil {
			return nil, fmt.Errorf("tlsx: %s:%d: %w", path, n, err)
		}
		id := Identity{Name: fields[1], Role: role}
		if err := id.Validate(); err != nil {
			return nil, fmt.Errorf("tlsx: %s:%d: %w", path, n, err)
		}
		if role == RoleNode || role == RoleRelay {
			return nil, fmt.Errorf("tlsx: %s:%d: a token cannot carry role %s", path, n, role)
		}
		t.byHash[strings.ToLower(fields[0])] = id
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("tlsx: tokens: %w", err)
	}
	return t, nil
}

// FromContext returns the identity of the bearer token of a gRPC call
// ("authorization: Bearer <token>" metadata), if t grants it.
func (t *Tokens) FromContext(ctx context.Context) (Identity, bool) {
	if t == nil {
		return Identity{}, false
	}
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return Identity{}, false
	}
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
			if id, ok := t.byHash[hashToken(tok)]; ok {
				return id, true
			}
		}
	}
	return Identity{}, false
}

// BearerToken is a gRPC per-call credential carrying a token; it is sent
// over TLS only.
type BearerToken string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b BearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (BearerToken) RequireTransportSecurity() bool { return true }
