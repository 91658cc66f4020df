//go:build race

package tokens

// raceEnabled: the race detector changes escape analysis, so allocation
// counts are only asserted without it (make test runs both).
const raceEnabled = true
