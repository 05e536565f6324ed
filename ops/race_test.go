//go:build race

package ops

// raceEnabled says the test binary was built with -race: dev up then
// builds the node with -race too, reusing the packages compiled for the
// test instead of compiling them all again.
const raceEnabled = true
