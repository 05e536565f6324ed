// Package replication carries writes between the sites of an Aviary
// deployment. Each node publishes its locally-originated journal entries,
// and a heartbeat every second, to its site's JetStream stream; a relay in
// every other site consumes that stream and applies it there through the
// local nodes (Replica.ApplyRemote). This file holds the names both sides
// agree on: streams, subjects, consumers and key-value buckets.
package replication

// Token returns s as one NATS subject token: every byte outside
// [A-Za-z0-9_-] becomes '_'. An empty s becomes "_", since a subject may
// not have an empty token. Distinct names can map to the same token
// ("a.b" and "a_b"); site and node names are expected to be plain.
func Token(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// subjectPrefix starts every replication subject.
const subjectPrefix = "aviary.repl."

// StreamName is the name of site's replication stream, on site's NATS.
func StreamName(site string) string { return "AVIARY_" + Token(site) }

// Subject is the subject node of site publishes its entries and heartbeats
// to.
func Subject(site, node string) string { return subjectPrefix + Token(site) + "." + Token(node) }

// SubjectAll matches the subjects of every node of site: the stream's
// subjects, and a relay consumer's filter.
func SubjectAll(site string) string { return subjectPrefix + Token(site) + ".>" }

// Buckets on the origin site's NATS through which relays talk back to the
// origin's nodes.
const (
	// WatermarkBucket holds, per path, the highest origin sequence the
	// applying site has applied durably (decimal); the origin node trims
	// its outbox up to the lowest of them.
	WatermarkBucket = "AVIARY_WM"
	// RepublishBucket holds repair requests: a relay that found a gap puts
	// the applying site's watermark (decimal), and the origin node
	// publishes its outbox again after it.
	RepublishBucket = "AVIARY_REPUBLISH"
)

// pathKey names the path from node originNode of site originSite to site
// applyingSite, as a key-value key.
func pathKey(originSite, originNode, applyingSite string) string {
	return Token(originSite) + "." + Token(originNode) + "." + Token(applyingSite)
}

// WatermarkKey is the key, in WatermarkBucket, of applyingSite's watermark
// of the entries of node originNode of site originSite.
func WatermarkKey(originSite, originNode, applyingSite string) string {
	return pathKey(originSite, originNode, applyingSite)
}

// RepublishKey is the key, in RepublishBucket, of applyingSite's request to
// node originNode of site originSite to publish again after a watermark.
func RepublishKey(originSite, originNode, applyingSite string) string {
	return pathKey(originSite, originNode, applyingSite)
}

// ConsumerName is the durable consumer, on every other site's stream,
// through which the relay of applyingSite reads it.
func ConsumerName(applyingSite string) string { return "relay-" + Token(applyingSite) }

// RelayPermissions are the subjects the relay of applyingSite may publish
// and subscribe to on the NATS of originSite: its own durable consumer on
// originSite's stream (create, info, fetch, acknowledge), the stream's
// info, and its own keys in the watermark and republish buckets; replies
// come to its inboxes. Nothing lets it publish to the stream, read another
// site's consumer or write another site's keys.
func RelayPermissions(originSite, applyingSite string) (publish, subscribe []string) {
	stream, cons := StreamName(originSite), ConsumerName(applyingSite)
	publish = []string{
		"$JS.API.INFO",
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + "." + cons,
		"$JS.API.CONSUMER.CREATE." + stream + "." + cons + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + "." + cons,
		"$JS.API.CONSUMER.INFO." + stream + "." + cons,
		"$JS.API.CONSUMER.MSG.NEXT." + stream + "." + cons,
		"$JS.ACK." + stream + "." + cons + ".>",
	}
	for _, b := range []string{WatermarkBucket, RepublishBucket} {
		publish = append(publish,
			"$JS.API.STREAM.INFO.KV_"+b,
			"$JS.API.STREAM.CREATE.KV_"+b,
			"$JS.API.STREAM.MSG.GET.KV_"+b,
			"$JS.API.DIRECT.GET.KV_"+b+".>",
			"$KV."+b+"."+Token(originSite)+".*."+Token(applyingSite),
		)
	}
	return publish, []string{"_INBOX.>"}
}
