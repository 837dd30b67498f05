// The seed guide's Express server, as the guide writes it; PORT and PUBLIC_DIR may be set
// so that `make bench` runs it next to tokend.
const express = require("express");
const path = require("path");
const { generateTempToken } = require("./tokenGenerator");

const app = express();
const PORT = process.env.PORT || 8000;

app.use(express.static(process.env.PUBLIC_DIR || path.join(__dirname, "public")));

app.get("/token", async (req, res) => {
  try {
    const token = await generateTempToken(60);
    res.json({ token });
  } catch (error) {
    res.status(500).json({ error: "Failed to generate token" });
  }
});

app.listen(PORT, () => {
  console.log(`Server is running at http://localhost:${PORT}`);
});
