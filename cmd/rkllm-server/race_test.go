//go:build race

package main_test

// raceEnabled is true when the tests run under -race: the load tests then run a server
// built with -race too.
const raceEnabled = true
