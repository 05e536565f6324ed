.PHONY: run test race lint proto bench

run:
	go run ./cmd/node

test:
	go test -race ./...

race: test

lint:
	go mod tidy -diff
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

proto:
	scripts/genproto

bench:
	go run ./cmd/bench
