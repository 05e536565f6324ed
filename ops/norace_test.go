//go:build !race

package ops

// raceEnabled says the test binary was built with -race.
const raceEnabled = false
