//! Parse, validate and generate code from a Microkit system description (system.xml).
