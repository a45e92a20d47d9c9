package audit

// FullRecordForTest is fullRecord for the external tests.
var FullRecordForTest = fullRecord
