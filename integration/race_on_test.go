//go:build integration && race

package integration

// raceEnabled builds the ftpguard binary under test with -race too.
const raceEnabled = true
